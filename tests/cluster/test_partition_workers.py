"""Issue 13's partition with real workers: node A loses PostgreSQL but NOT WhatsApp. Two real `baileys-supervisor run`
daemons, real node workers with real Baileys, the simulator (tests/wa_sim). Daemon A runs in a network namespace and
reaches the database over the veth's first address pair and the simulator over a second pair (`NetNs.second_path`);
`partition()` blackholes only the first, so A's workers stay connected to WhatsApp. Daemon B runs in the root
namespace. If A did not fence itself, B's takeover would open a second session of each device, WhatsApp's
newest-wins 440 would kick A's, A's worker would reconnect and kick B's (a 440 war), and A's Signal writes would be
stale. Asserted: A kills its workers before B's first claim; B connects every tenant with the saved creds (no QR);
the simulator never saw two live sessions of a device nor a session replaced by a conflict; after the heal A gets its
node lock back and takes a tenant back by hand-off, and over a window each tenant has one owner and one live worker,
with no 440; no tenant_kv write committed after the next epoch's bump (an audit trigger records every write, and
track_commit_timestamp orders the commits: tests/cluster/procs.py's stale_commits, as for the zombie writer).
A second test heals the cut after A fenced but before the server could drop A's session: the same guarantees."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime

import psycopg
import pytest

from supervisor.cluster.placement import ranking
from tests.cluster.procs import stale_commits
from tests.conftest import kill_marked, live_workers
from tests.e2e.e2e_harness import WAIT, Daemon, Simulator, daemon_config, free_port, wait_for

pytestmark = pytest.mark.e2e

# test_partition.py's timings: the server drops a silent session after release_after, A fences after fence_after
TIMING = {"ping_interval": 0.5, "fence_after": 3, "release_after": 6, "claim_interval": 0.3}
SECRET = "partition-test-secret-not-a-real-one"  # A listens on a veth address: a non-loopback API needs one
WINDOW = 10.0  # after the heal: no 440, one owner and one worker per tenant throughout

# Every committed write of tenant_kv, with its transaction (the row itself keeps only the last write of a key).
AUDIT = """
CREATE TABLE kv_audit (tenant_id text, k text, epoch bigint);
CREATE FUNCTION kv_audit_f() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO kv_audit VALUES (NEW.tenant_id, NEW.k, NEW.epoch); RETURN NEW; END $$;
CREATE TRIGGER kv_audit_t AFTER INSERT OR UPDATE ON tenant_kv FOR EACH ROW EXECUTE FUNCTION kv_audit_f();
"""


def owners(dsn: str) -> dict[str, str | None]:
    with psycopg.connect(dsn) as c:
        return dict(c.execute("SELECT tenant_id, owner FROM tenant_owner").fetchall())


def at(e: dict) -> float:
    return datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()


def logged(d: Daemon, name: str, after: float) -> list[dict]:
    return [e for e in d.log_events() if e.get("event") == name and at(e) > after]


def sessions_ok(sim: Simulator) -> None:
    """Never two live sessions of a device, never a session replaced by a duplicate (the 440 a war starts with)."""
    st = sim.state()
    assert st["maxConcurrentAnyDevice"] == 1, "two live sessions of one device"
    assert st["counters"]["conflictsFromDuplicates"] == 0, "a session was replaced by a conflict (440)"
    assert not [j for j, d in st["devices"].items() if d["conflicts"]], st["devices"]


class Pair:
    """Daemon A (in the namespace, PostgreSQL over the veth's first pair, the simulator over the second) with three
    tenants paired and connected on it, daemon B in the root namespace; stopped at teardown."""

    def __init__(self, netns, pg_on_veth, tmp_path, marker: str) -> None:
        sim_host, a_host = netns.second_path()
        self.netns, self.tmp_path, self.marker = netns, tmp_path, marker
        self.dsn = pg_on_veth.create_db()
        self.made: list[Daemon] = []
        self.sim = Simulator("--host", sim_host, log_path=tmp_path / "sim.log")
        try:
            self.a = self.node("a", a_host, pg_on_veth.dsn(self.dsn.rsplit("=", 1)[1], host=netns.host_ip),
                               netns.exec_prefix())
            with psycopg.connect(self.dsn, autocommit=True) as c:  # the schema exists once A is up
                c.execute(AUDIT)
            # tenants whose first choice is A: B's arrival hands none of them off, so all three are A's at the cut
            self.tids = [t for t in (f"p{i}" for i in range(40)) if ranking(t, ["a", "b"])[0] == "a"][:3]
            self.linked, self.jids = {}, {}
            for t in self.tids:  # start (A claims it in its next round) -> QR -> scan -> connected
                self.a.start_tenant(t)
                self.a.wait_status(t, lambda s: s.get("hasQR"), 2 * WAIT, "hasQR on its owner")
                scan = self.sim.scan(self.a.qr(t)["qr"])
                assert scan.get("ok"), scan
                self.jids[t] = scan["jid"]
                self.linked[t] = self.a.wait_connected(t)["me"]["id"]
            self.b = self.node("b", "127.0.0.1", self.dsn)
            time.sleep(3 * TIMING["claim_interval"])  # a few claim rounds of B: nothing may move (checked next)
            assert owners(self.dsn) == {t: "a" for t in self.tids}
            self.a_workers = live_workers(f"{marker}-a")
            assert sorted(self.a_workers.values()) == sorted(self.tids), self.a_workers  # one each, on A
            sessions_ok(self.sim)
        except BaseException:
            self.close()
            raise

    def node(self, name: str, host: str, node_dsn: str, prefix: tuple[str, ...] = ()) -> Daemon:
        cfg = daemon_config(self.tmp_path / f"storage-{name}", free_port(), self.sim.ws_url,
                            marker=f"{self.marker}-{name}")
        cfg["api"].update(host=host, secret=SECRET)
        cfg["cluster"] = {"backend": "postgres", "dsn": node_dsn, "node_id": name, **TIMING}
        self.made.append(Daemon(self.tmp_path / f"node-{name}", cfg, prefix=prefix))
        return self.made[-1].start(2 * WAIT)

    def workers(self) -> list[str]:
        """The tenant of every live worker of both nodes."""
        return [*live_workers(f"{self.marker}-a").values(), *live_workers(f"{self.marker}-b").values()]

    def placed(self, nodes: set[str] | None = None) -> dict[str, str] | None:
        """tenant -> node, once each tenant is connected on its owner, the owners are exactly `nodes` (None: any of
        a and b) and there is one live worker per tenant across both nodes."""
        own = owners(self.dsn)
        where = set(own.values())
        if not where <= {"a", "b"} or (nodes is not None and where != nodes):
            return None
        if Counter(self.workers()) != Counter(self.tids):
            return None
        daemons = {"a": self.a, "b": self.b}
        for t, n in own.items():
            st = daemons[n].status(t)
            if not (st.get("owner") == n and st["connected"] and st["pid"]):
                return None
        return own

    def quiet_window(self, settled: dict[str, str]) -> None:
        """WINDOW seconds: a war would show as a conflict, a second session, a moved tenant or a second worker."""
        end = time.monotonic() + WINDOW
        while time.monotonic() < end:
            sessions_ok(self.sim)
            assert owners(self.dsn) == settled
            assert Counter(self.workers()) == Counter(self.tids), self.workers()
            time.sleep(0.5)
        assert self.sim.counters()["registrations"] == len(self.tids)

    def close(self) -> None:
        for d in self.made:
            d.stop()
        for n in ("a", "b"):
            kill_marked(f"{self.marker}-{n}")
        self.sim.stop()


@pytest.fixture
def pair(netns, pg_on_veth, tmp_path, marker):
    p = Pair(netns, pg_on_veth, tmp_path, marker)
    try:
        yield p
    finally:
        p.close()


def test_db_partition_live_workers_fence_before_takeover_no_440_war(pair, netns):
    a, b, sim, tids, marker = pair.a, pair.b, pair.sim, pair.tids, pair.marker
    jids, linked, a_workers = pair.jids, pair.linked, pair.a_workers
    before = sim.counters()
    contact = sim.call("POST", "/contacts", {"pushName": "Eve"})["phone"]
    cut = time.time()
    netns.partition()  # only A <-> PostgreSQL: A's workers still reach the simulator
    # A message for the first tenant: Signal writes (pkmsg: session, pre-key removal) on A that cannot commit; its
    # worker typically exits on auth_write_failed before the fence, the others are idle until the fence kills them.
    # Unacknowledged, the simulator redelivers it to B, whose store state (without A's failed writes) decrypts it.
    sent = sim.call("POST", "/contacts/send", {"from": contact, "to": jids[tids[0]], "text": "during the cut"})
    assert sent.get("ok"), sent
    for t in tids:
        st = b.wait_connected(t, 4 * WAIT)
        assert st["owner"] == "b" and st["me"]["id"] == linked[t]
    sessions_ok(sim)  # first: a node that did not fence shows here (A's live sessions replaced by B's)
    [fenced] = logged(a, "cluster.fenced", cut)
    [killed] = logged(a, "cluster.workers_killed", cut)
    claimed = logged(b, "cluster.claimed", cut)
    opened = {e["tenant"]: at(e) for e in logged(b, "tenant.open", cut)}
    print(f"\ncut -> A fenced {at(fenced) - cut:.2f} s (workers killed {at(killed) - cut:.2f} s), B's first "
          f"claim {at(claimed[0]) - cut:.2f} s, B connected {min(opened.values()) - cut:.2f}-"
          f"{max(opened.values()) - cut:.2f} s")
    assert at(killed) < at(claimed[0]), "B claimed A's tenants before A had killed its workers"
    assert at(fenced) - cut < TIMING["release_after"], "fenced after the server could have released the lock"
    # A worker whose state write failed (the client's tcp_user_timeout, 3/4 of fence_after) has exited on
    # auth_write_failed before the fence; the fence SIGKILLs the rest. Either way before B's claim.
    ended = {e["tenant"] for e in logged(a, "tenant.close", cut) if at(e) <= at(killed)}
    print(f"A's workers: {len(ended)} ended before the fence, {killed['workers']} killed by it")
    assert len(ended) + killed["workers"] >= len(a_workers), (ended, killed)
    assert not live_workers(f"{marker}-a"), "a worker of the fenced node survived"
    assert sorted(opened) == sorted(tids)
    assert not [e for e in b.log_events() if e.get("event") == "tenant.qr"], "B showed a QR"

    def receipts() -> list[dict]:
        inbox = sim.call("GET", f"/contacts/inbox?contact={contact}")
        return [r for r in inbox["receiptsIn"] if r["id"] == sent["id"]]
    t0 = time.monotonic()
    got = wait_for(receipts, 2 * WAIT, "a receipt for the message sent during the cut")
    print(f"the message sent during the cut: receipt {got} {time.monotonic() - t0:.2f} s after B connected, "
          f"mailbox {sim.call('GET', '/mailbox')['devices'].get(jids[tids[0]])}")
    c = sim.counters()
    assert c["registrations"] == before["registrations"] == len(tids) and c["pairings"] == len(tids)
    assert c["logins"] >= before["logins"] + len(tids)  # B logged in with the saved creds

    heal = time.time()
    netns.heal()
    wait_for(lambda: logged(a, "cluster.lock_acquired", heal), 4 * WAIT, "A's node lock again")
    relocked = at(logged(a, "cluster.lock_acquired", heal)[0])
    settled = wait_for(lambda: pair.placed({"a", "b"}), 4 * WAIT,
                       "A rejoined: its share back, connected, one worker per tenant")
    back = min(opened_at for t, opened_at in ((e["tenant"], at(e)) for e in logged(a, "tenant.open", heal)))
    print(f"heal -> A's lock {relocked - heal:.2f} s, a tenant connected on A again {back - heal:.2f} s; {settled}")
    pair.quiet_window(settled)
    # A never acknowledged it (its commit failed, so Baileys sent no receipt); B decrypted the redelivery once
    assert len(receipts()) == 1, receipts()
    no_stale_writes(pair, cut)


def no_stale_writes(pair: Pair, cut: float) -> None:
    total, late, unknown = stale_commits(pair.dsn, "kv_audit", writer=None)
    failed = {n: len(logged(pair.a, f"cluster.{n}", cut)) for n in ("state_fenced", "state_write_failed")}
    print(f"A's state transactions after the cut: {failed}; tenant_kv writes committed: {total}, after their "
          f"epoch's successor: {late}, at unclaimed epochs: {unknown}")
    assert total > 0 and late == 0 and unknown == 0, (total, late, unknown)


def test_short_db_partition_healed_before_release_one_owner_no_440(pair, netns):
    """Healed after A fenced but before the server could drop A's session (release_after): B cannot take over
    while A's lock is held; A's killed workers come back on whichever node gets the tenants (A re-claims with a
    bump, or B takes over once A's old session is gone), never two sessions of a device."""
    a, b, tids = pair.a, pair.b, pair.tids
    cut = time.time()
    netns.partition()
    fenced = wait_for(lambda: logged(a, "cluster.fenced", cut), 2 * WAIT, "A fenced")[0]
    heal = time.time()
    netns.heal()
    [killed] = logged(a, "cluster.workers_killed", cut)
    assert killed["workers"] == len(pair.a_workers)
    assert heal - cut < TIMING["release_after"], "healed too late for this case: the server may have released"
    settled = wait_for(pair.placed, 4 * WAIT, "every tenant connected on its owner, one worker each")
    opened = [at(e) for n in (a, b) for e in logged(n, "tenant.open", heal)]
    b_claims = logged(b, "cluster.claimed", cut)
    print(f"\ncut -> A fenced {at(fenced) - cut:.2f} s, healed {heal - cut:.2f} s; heal -> all connected again "
          f"{max(opened) - heal:.2f} s; {settled}; B claimed {sum(e['tenants'] for e in b_claims)}")
    assert not [e for e in b_claims if at(e) < heal], "B claimed while A's session could still be held"
    assert len(opened) >= len(tids)
    assert not [e for n in (a, b) for e in n.log_events() if e.get("event") == "tenant.qr" and at(e) > cut]
    pair.quiet_window(settled)
    no_stale_writes(pair, cut)
