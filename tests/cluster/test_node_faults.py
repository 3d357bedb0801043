"""Node processes (tests/cluster/node_proc.py) on a real PostgreSQL: SIGKILL of a node (its tenants are re-owned by
the others, epochs bumped, its stand-in workers gone), SIGSTOP beyond the server's release time (nobody can claim
while it is stopped; after SIGCONT it fences itself first), and the zombie writer's 0 stale commits."""

from __future__ import annotations

import os
import signal
import time

import psutil

from tests.cluster.procs import NodeProc, create_test_writes, live_workers, owners, settled, stale_commits, want


def wait_until(pred, timeout: float, step: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def start(pg_dsn, tmp_path, names, *args):
    create_test_writes(pg_dsn)
    nodes = {n: NodeProc(pg_dsn, n, tmp_path, *args) for n in names}
    for p in nodes.values():
        p.wait_event("ready", 60)
    return nodes


def test_sigkill_node_tenants_reowned_by_others(pg_dsn, tmp_path):
    nodes = start(pg_dsn, tmp_path, ["a", "b", "c"], "--workers", "--zombie-writer")
    try:
        tids = [f"t{i}" for i in range(45)]
        want(pg_dsn, tids)
        wait_until(lambda: len(owners(pg_dsn)) == 45 and settled(pg_dsn, list(nodes.values())), 60)
        before = owners(pg_dsn)
        victim = max("abc", key=lambda n: sum(1 for o, _ in before.values() if o == n))
        mine = {t: e for t, (o, e) in before.items() if o == victim}
        assert mine
        workers = list(live_workers(nodes[victim]).values())
        t0 = time.monotonic()
        nodes[victim].proc.kill()
        nodes[victim].proc.wait()

        def reowned():
            now = owners(pg_dsn)
            return all(now[t][0] not in (None, victim) for t in mine) and now
        after = wait_until(reowned, 30, step=0.01)
        took = time.monotonic() - t0
        print(f"\n{len(mine)} tenants of a SIGKILLed node re-owned in {took * 1000:.0f} ms")
        assert all(after[t][1] == mine[t] + 1 for t in mine)  # exactly one bump each: one takeover
        assert all(after[t] == before[t] for t in before if t not in mine)  # the others' tenants untouched
        wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                   for p in workers), 10)  # its workers did not outlive it
        time.sleep(1.0)  # the survivors' zombie writers keep going across the takeover
        total, late, foreign = stale_commits(pg_dsn)
        assert total > 0 and late == 0 and foreign == 0, (total, late, foreign)
    finally:
        for p in nodes.values():
            p.stop()


def test_sigstop_beyond_release_time_then_fences_itself(pg_dsn, tmp_path):
    # release_after 6 s: the server would drop a *silent* session by then; a stopped process is not silent (its
    # kernel still ACKs), so the lock stays held and nobody may claim; on SIGCONT the node must fence first.
    timing = ("--fence-after", "3", "--release-after", "6", "--ping-interval", "0.5")
    nodes = start(pg_dsn, tmp_path, ["a", "b"], "--workers", "--zombie-writer", *timing)
    try:
        want(pg_dsn, [f"t{i}" for i in range(12)])
        wait_until(lambda: all(o for o, _ in owners(pg_dsn).values()) and len(owners(pg_dsn)) == 12, 60)
        a, b = nodes["a"], nodes["b"]
        if not any(o == "a" for o, _ in owners(pg_dsn).values()):
            a, b = b, a
        wait_until(lambda: settled(pg_dsn, [a, b]), 30)  # its workers are all up, no hand-off in flight
        held = {t for t, (o, _) in owners(pg_dsn).items() if o == a.node}
        a_workers = list(live_workers(a).values())
        os.kill(a.proc.pid, signal.SIGSTOP)
        stopped_at = time.time()
        time.sleep(9.0)  # > release_after: positive wait on purpose, the claim that must NOT happen has no event
        assert {t for t, (o, _) in owners(pg_dsn).items() if o == a.node} == held  # nobody could claim
        os.kill(a.proc.pid, signal.SIGCONT)
        fence = a.wait_event("fence", 30, lambda e: e["at"] > stopped_at)
        assert fence["reason"] == "ping_deadline"
        assert sorted(fence["killed"]) == sorted(a_workers)
        assert not [p for p in a_workers if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        # every tenant ends with one owner at a bumped epoch; the zombie's old-epoch writes never commit late
        wait_until(lambda: all(o for o, _ in owners(pg_dsn).values()), 30)
        time.sleep(1.5)
        total, late, foreign = stale_commits(pg_dsn)
        assert total > 0 and late == 0 and foreign == 0, (total, late, foreign)
        first_gain_after = [e for p in nodes.values() for e in p.events("gain")
                            if e["tenant"] in held and e["at"] > stopped_at]
        assert first_gain_after and min(e["at"] for e in first_gain_after) >= fence["at"]  # fenced before re-owned
    finally:
        for p in nodes.values():
            p.stop()


def test_sigterm_drains_to_the_other_nodes(pg_dsn, tmp_path):
    nodes = start(pg_dsn, tmp_path, ["a", "b"], "--workers")
    try:
        want(pg_dsn, [f"t{i}" for i in range(16)])
        wait_until(lambda: settled(pg_dsn, list(nodes.values())), 60)
        a, b = nodes["a"], nodes["b"]
        if not live_workers(a):
            a, b = b, a
        held = set(live_workers(a))
        t0 = time.time()
        a.proc.send_signal(signal.SIGTERM)
        a.wait_event("drained", 30)
        assert a.proc.wait(30) == 0
        wait_until(lambda: set(live_workers(b)) >= held, 30)
        took = max(e["at"] for e in b.events("gain") if e["tenant"] in held) - t0
        print(f"\nSIGTERM: {len(held)} tenants handed over in {took * 1000:.0f} ms")
        # each hand-off: the old worker stopped (lose) before the new owner started one (gain)
        lost_at = {e["tenant"]: e["at"] for e in a.events("lose") if e["at"] >= t0}
        gained_at = {e["tenant"]: e["at"] for e in b.events("gain") if e["at"] >= t0}
        assert set(lost_at) == held and all(lost_at[t] <= gained_at[t] for t in held)
        assert all(o == "b" for o, _ in owners(pg_dsn).values())
    finally:
        for p in nodes.values():
            p.stop()
