"""Cluster mode in the daemon (supervisor/cluster_node.py): three real `baileys-supervisor run` processes with fake
workers on one real PostgreSQL. Tenants started through different nodes land on exactly one node each (live fake
workers counted by each node's argv marker: never two for one tenant); a SIGKILLed node's tenants run on the others
and its workers are gone; a SIGTERMed node hands its tenants over; GET /cluster and status answer from any node."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.cluster.procs import owners
from tests.conftest import kill_marked, live_workers
from tests.test_ops_openapi import validate
from tests.support import DaemonProcess, fake_config, free_port, http_json, wait_for

SECRET = "s3cret-cluster"
H = {"X-Internal-Secret": SECRET}
NODES = ("a", "b", "c")


@pytest.fixture
def cluster3(pg_dsn, tmp_path, marker):
    daemons: dict[str, DaemonProcess] = {}

    def make(names=NODES, **cluster_kw) -> dict[str, DaemonProcess]:
        for n in names:
            port = free_port()
            state = tmp_path / f"state-{n}"
            state.mkdir()
            cfg = fake_config(tmp_path / f"storage-{n}", state, f"{marker}-{n}", port=port, secret=SECRET,
                              cluster={"backend": "postgres", "dsn": pg_dsn, "node_id": n,
                                       "advertise_url": f"http://127.0.0.1:{port}", "ping_interval": 0.5,
                                       "fence_after": 4, "release_after": 10, "claim_interval": 0.3, **cluster_kw})
            daemons[n] = DaemonProcess(tmp_path / f"node-{n}", cfg).start(timeout=60)
        return daemons

    try:
        yield make
    finally:
        for d in daemons.values():
            d.stop()
        for n in NODES:
            kill_marked(f"{marker}-{n}")


def workers(marker: str, names=NODES) -> dict[str, list[str]]:
    """node -> tenants of its live fake workers."""
    return {n: sorted(live_workers(f"{marker}-{n}").values()) for n in names}


def one_each(marker: str, tids: list[str], names=NODES) -> dict[str, str] | None:
    """tenant -> node when every tenant has exactly one live worker on some node, else None. Asserts the invariant
    that must hold at every moment: never two live workers for one tenant."""
    where = workers(marker, names)
    count = Counter(t for ts in where.values() for t in ts)
    doubled = [t for t, c in count.items() if c > 1]
    assert not doubled, f"two live workers for {doubled}: {where}"
    if sorted(count) != sorted(tids):
        return None
    return {t: n for n, ts in where.items() for t in ts}


def settled(marker: str, tids: list[str], dsn: str, names=NODES) -> dict[str, str] | None:
    """one_each, and each worker on its owner of record (no claim or hand-off in flight)."""
    where = one_each(marker, tids, names)
    return where if where and {t: o for t, (o, _) in owners(dsn).items()} == where else None


def test_tenants_land_once_survive_sigkill_and_drain(cluster3, pg_dsn, marker):
    d = cluster3()
    tids = [f"t{i:02d}" for i in range(30)]
    for i, t in enumerate(tids):  # each start through a different node
        status, body = http_json("POST", d[NODES[i % 3]].url + f"/whatsapp/{t}/start", headers=H)
        assert status == 200, body
        assert body["tenant"] == t and "owner" in body
    placed = wait_for(lambda: settled(marker, tids, pg_dsn), 60, "30 tenants, one worker each, on its owner")
    own = owners(pg_dsn)
    assert len(set(placed.values())) >= 2  # placement spreads them

    # any node answers for any tenant: owner and epoch from the shared state
    t0 = tids[0]
    for n in NODES:
        st = wait_for(lambda: (lambda r: r[1] if r[1].get("owner") == placed[t0] else None)(
            http_json("GET", d[n].url + f"/whatsapp/{t0}/status", headers=H)), 10, "status from every node")
        assert st["epoch"] == own[t0][1]
        validate(st, {"$ref": "#/components/schemas/" + ("TenantStatus" if n == placed[t0] else "RemoteTenantStatus")})
    status, view = http_json("GET", d["a"].url + "/cluster", headers=H)
    assert status == 200 and {x["nodeId"] for x in view["nodes"]} == set(NODES)
    validate(view, {"$ref": "#/components/schemas/ClusterView"})
    # b lists the other nodes' tenants from its snapshot of the owner rows, refreshed every claim_interval: a claim
    # that settled just now may show up one refresh later (seen once: a tenant still unowned in b's snapshot)
    seen: list = []

    def listing() -> list | None:
        seen[:] = [http_json("GET", d["b"].url + "/whatsapp", headers=H)[1]["tenants"]]
        return seen[0] if {x["tenant"]: x["owner"] for x in seen[0]} == placed else None

    try:
        listed = wait_for(listing, 10, "b lists every tenant with its owner")
    except TimeoutError:
        raise AssertionError(f"b's list: {[(x['tenant'], x['owner']) for x in seen[0]]}, placed {placed}") from None
    assert [x["tenant"] for x in listed] == tids
    for x in listed:  # ours: the full status; the others' tenants: from the store
        validate(x, {"$ref": "#/components/schemas/" + ("TenantStatus" if x["owner"] == "b" else "RemoteTenantStatus")})
    assert {t: x["nodeId"] for x in view["nodes"] for t in x["tenants"]} == placed
    assert http_json("GET", d["a"].url + "/cluster")[0] == 401  # behind the secret
    # a command that needs the live worker, on a node that does not own the tenant, already forwarded once (the
    # loop guard: tests/cluster/test_forward.py covers the forwarding itself): 409 with the owner
    other = next(n for n in NODES if n != placed[t0])
    status, body = http_json("POST", d[other].url + f"/whatsapp/{t0}/restart",
                             headers={**H, "X-Bsup-Forwarded-By": placed[t0]})
    assert status == 409 and body["error"] == "not_owner" and body["owner"] == placed[t0]
    assert body["advertiseUrl"] == d[placed[t0]].url

    # SIGKILL the busiest node: its tenants run on the others, its workers die with it (stdin EOF)
    victim = Counter(placed.values()).most_common(1)[0][0]
    rest = [n for n in NODES if n != victim]
    moved = [t for t, n in placed.items() if n == victim]
    d[victim].kill9()
    t_kill = time.monotonic()
    after = wait_for(lambda: settled(marker, tids, pg_dsn), 60, "the victim's tenants re-started elsewhere")
    print(f"\nSIGKILL: {len(moved)} tenants running on the other nodes after {time.monotonic() - t_kill:.2f} s")
    assert all(after[t] in rest for t in moved)
    assert all(after[t] == placed[t] for t in tids if t not in moved)  # the others' tenants untouched
    assert not live_workers(f"{marker}-{victim}")  # no orphan workers
    # one takeover each; or two moves: a survivor whose peer's claim loop lagged 5 rounds on a loaded machine takes
    # the peer's share too (a hung loop must not strand tenants) and hands it on at its next round (placement)
    bumps = {t: owners(pg_dsn)[t][1] - own[t][1] for t in moved}
    print(f"epoch bumps of the moved tenants: {bumps}")
    assert all(b in (1, 2) for b in bumps.values()), bumps

    # SIGTERM drains: the leaver's tenants are handed to the last node, exit 0
    leaver, last = rest
    assert d[leaver].stop(60) == 0
    final = wait_for(lambda: one_each(marker, tids), 60, "the drained tenants on the last node")
    assert set(final.values()) == {last}
    assert not live_workers(f"{marker}-{leaver}")
    events = [e for e in d[leaver].log_events() if e.get("event") == "cluster.released"]
    assert any(e.get("reason") == "drain" for e in events)


def test_stop_from_any_node_and_started_stays_started(cluster3, pg_dsn, marker):
    d = cluster3(("a", "b"))
    tids = ["s1", "s2", "s3", "s4"]
    for t in tids:
        assert http_json("POST", d["a"].url + f"/whatsapp/{t}/start", headers=H)[0] == 200
    placed = wait_for(lambda: settled(marker, tids, pg_dsn, ("a", "b")), 60, "4 tenants running")
    # stop through the node that does not own it: the owner stops its worker, the row stays unwanted
    t = next((t for t, n in placed.items() if n == "b"), tids[0])
    via = "a" if placed[t] == "b" else "b"
    status, body = http_json("POST", d[via].url + f"/whatsapp/{t}/stop", headers=H)
    assert status == 200, body
    rest = [x for x in tids if x != t]
    wait_for(lambda: one_each(marker, rest, ("a", "b")), 30, "the stopped tenant's worker gone")
    for n in ("a", "b"):  # from either node, once the owner has released it: stopped, not wanted, no owner
        st = wait_for(lambda: (lambda r: r[1] if r[1].get("owner") is None else None)(
            http_json("GET", d[n].url + f"/whatsapp/{t}/status", headers=H)), 10, "stop visible from any node")
        assert st["state"] == "stopped" and st["wanted"] is False
    # a node restarted with an empty boot list: what was started stays started (the store, not the config)
    survivor = "a" if placed[rest[0]] == "b" else "b"
    d["b" if survivor == "a" else "a"].kill9()
    wait_for(lambda: one_each(marker, rest, ("a", "b")), 60, "started tenants still running after a node death")
    assert owners(pg_dsn)[t][0] is None
    assert t not in [x for ts in workers(marker, ("a", "b")).values() for x in ts]


def test_unknown_tenant_status_is_404_in_cluster_mode(cluster3):
    d = cluster3(("a",))
    status, body = http_json("GET", d["a"].url + "/whatsapp/nobody/status", headers=H)
    assert status == 404 and body["error"] == "unknown_tenant"
    status, body = http_json("POST", d["a"].url + "/whatsapp/nobody/stop", headers=H)
    assert status == 404 and body["error"] == "unknown_tenant"


def test_metrics_and_doctor_in_cluster_mode(cluster3, marker):
    import json
    import subprocess

    from tests.support import CLI

    d = cluster3(("a",))
    for t in ("m1", "m2"):
        assert http_json("POST", d["a"].url + f"/whatsapp/{t}/start", headers=H)[0] == 200
    wait_for(lambda: one_each(marker, ["m1", "m2"], ("a",)), 60, "2 tenants running")

    def scrape() -> str:
        import urllib.request

        req = urllib.request.Request(d["a"].url + "/metrics", headers=H)
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()
    text = scrape()
    assert "baileys_supervisor_cluster_owned_tenants 2.0" in text
    assert "baileys_supervisor_cluster_fenced 0.0" in text
    p = subprocess.run([str(CLI), "doctor", "--config", str(d["a"].config_path), "--json", "--timeout", "10"],
                       capture_output=True, text=True, timeout=60)
    report = json.loads(p.stdout)
    checks = {c["name"]: c for c in report["daemon"]}
    assert checks["cluster.database"]["verdict"] == "pass", checks
    assert checks["cluster.node"]["verdict"] == "pass" and "holds its lock" in checks["cluster.node"]["detail"]
    assert checks["cluster.schema"]["verdict"] == "pass"
    assert set(report["tenants"]) == {"m1", "m2"}


def test_sigstopped_daemon_fences_itself_then_its_tenants_run_again(cluster3, pg_dsn, marker):
    """SIGSTOP beyond fence_after: on SIGCONT the daemon's first lease check says lapsed, it SIGKILLs its workers
    (on_fence), its gate keeps their restart loops from respawning, and the tenants run again after a re-claim (one
    bump). A stopped process keeps its lock (its kernel still ACKs): nobody else starts them meanwhile."""
    import os
    import signal

    d = cluster3(("a", "b"))
    tids = [f"p{i}" for i in range(6)]
    for t in tids:
        assert http_json("POST", d["a"].url + f"/whatsapp/{t}/start", headers=H)[0] == 200
    placed = wait_for(lambda: settled(marker, tids, pg_dsn, ("a", "b")), 60, "6 tenants running")
    victim = Counter(placed.values()).most_common(1)[0][0]
    mine = [t for t, n in placed.items() if n == victim]
    old_pids = set(live_workers(f"{marker}-{victim}"))
    epochs = {t: e for t, (_, e) in owners(pg_dsn).items()}
    os.kill(d[victim].pid, signal.SIGSTOP)
    try:
        end = time.monotonic() + 6.0  # > fence_after (4 s): a positive wait, the lapse has no event while stopped
        while time.monotonic() < end:
            one_each(marker, tids, ("a", "b"))  # never two workers for one tenant, at any poll
            time.sleep(0.2)
    finally:
        os.kill(d[victim].pid, signal.SIGCONT)
    wait_for(lambda: [e for e in d[victim].log_events() if e.get("event") == "cluster.workers_killed"], 30,
             "the resumed daemon killed its workers")
    wait_for(lambda: (lambda w: w if w and not set(live_workers(f"{marker}-{victim}")) & old_pids else None)(
        settled(marker, tids, pg_dsn, ("a", "b"))), 60, "the fenced tenants running again on fresh workers")
    assert not any(p in old_pids for n in ("a", "b") for p in live_workers(f"{marker}-{n}"))
    now = owners(pg_dsn)
    # re-claimed by the victim (one bump), or taken over by the other node and maybe handed back (two)
    assert all(now[t][1] > epochs[t] for t in mine)
    fenced = [e for e in d[victim].log_events() if e.get("event") == "cluster.fenced"]
    assert fenced and fenced[0]["reason"] == "ping_deadline"


def test_unreachable_database_is_one_clear_line_and_a_nonzero_exit(tmp_path, marker):
    port = free_port()  # nothing listens there
    cfg = fake_config(tmp_path / "storage", tmp_path, marker, port=free_port(), secret=SECRET,
                      cluster={"backend": "postgres", "dsn": f"host=127.0.0.1 port={port} user=u password=hunter2x",
                               "node_id": "z"})
    d = DaemonProcess(tmp_path / "node-z", cfg).start(wait=False)
    assert d.proc.wait(60) != 0
    text = d.log_text()
    assert "cluster_unavailable" in text and "cannot join the cluster as node 'z'" in text
    assert "Traceback" not in text and "hunter2x" not in text


def test_postgres_restart_daemons_fence_and_every_tenant_runs_once(cluster3, pg_server, pg_dsn, marker):
    """A server restart drops every node lock at once: each daemon fences (kills its workers), re-acquires when the
    server is back, and every tenant ends with exactly one owner and one worker; never two workers at any poll."""
    import threading

    d = cluster3(("a", "b"))
    tids = [f"r{i}" for i in range(8)]
    for i, t in enumerate(tids):
        assert http_json("POST", d["ab"[i % 2]].url + f"/whatsapp/{t}/start", headers=H)[0] == 200
    wait_for(lambda: one_each(marker, tids, ("a", "b")), 60, "8 tenants running")
    old_pids = {p for n in "ab" for p in live_workers(f"{marker}-{n}")}
    restart = threading.Thread(target=pg_server.restart)
    restart.start()
    while restart.is_alive():  # the invariant holds while the server is down too
        one_each(marker, tids, ("a", "b"))
        time.sleep(0.1)
    restart.join()
    for n in "ab":
        wait_for(lambda n=n: [e for e in d[n].log_events() if e.get("event") == "cluster.workers_killed"], 30,
                 f"node {n} fenced")

    wait_for(lambda: settled(marker, tids, pg_dsn, ("a", "b")) and not {
        p for n in "ab" for p in live_workers(f"{marker}-{n}")} & old_pids, 60, "all running again, each on its owner")
