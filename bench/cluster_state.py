"""Tenant state in PostgreSQL vs files, in the same run (issue 13 "Numbers"; docs/cluster.md "Tenant state").

Two real `baileys-supervisor run` daemons against one simulator: `file` (single host, the default) and `postgres`
(cluster mode, one node, on a throwaway **durable** PostgreSQL started like tests/pg.py does: fsync on). Pairings
alternate between them (`file` first on even rounds, `postgres` first on odd), one fresh tenant each, stopped after
its measurements so one worker runs at a time:

  scan -> connected   simulator POST /scan until the daemon's status says connected (real Baileys)
  pre-key upload      the simulator's `login` -> `prekeys_uploaded` (812 keys written locally, and in postgres mode
                      committed to the store, before Baileys uploads them)
  store write         per `state` transaction (postgres daemon's debug line `cluster.state_committed`): `tx` = the
                      fenced transaction, `wait` = the oldest coalesced event's arrival -> its ack (what the worker
                      waits, minus the pipe); and the number of transactions/events per pairing

Then `--keep` tenants paired on the postgres node are started again (materialized from the store, login with the
saved creds) and kept connected: the server's connections (`pg_stat_activity`, by application_name) and advisory
locks (`pg_locks`) per node while they run; then a second node `pg2` joins, some tenants are handed off to it
(stopped on pg1, materialized on pg2, connected with the saved creds), and the same per node.

    PYTHONPATH=. .venv/bin/python bench/cluster_state.py [--pairings 10] [--keep 5] [--scan-delay 2]
        [--pg-variant 'LABEL=["node", ..., "/other/tree/node_worker/src/worker.mjs"]']

`--kill N` runs only this instead (issue 13 "SIGKILL -> all connected again"): nodes pg1 and pg2 (separate storage
roots, shipped cluster timings) both running; N tenants whose rendezvous first choice is pg1 are paired there (a scan
each) and connected, their linked creds in the store; then pg1's process group is SIGKILLed (its workers die by
PDEATHSIG) and, from the kill: each tenant re-owned (`tenant_owner.owner` is pg2), materialized on pg2 (its log) and
connected on pg2 (pg2's status: owner pg2, connected, a pid), per tenant and until the last one. Checked: no QR on
pg2, no new registration, the same linked account, never two live sessions of a device, no worker of pg1 left.

    PYTHONPATH=. .venv/bin/python bench/cluster_state.py --kill 8

`--sent-rows R` (issue 13, "materialize with a big sent store"), with `--kill N`: each tenant also gets R sent-store
rows seeded into the store (at pg1's epoch) before the kill, so pg2 (an empty storage root) materializes them. The
materialize step alone, with the dir empty or present: bench/materialize_sent.py.

    PYTHONPATH=. .venv/bin/python bench/cluster_state.py --kill 2 --sent-rows 10000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psutil  # noqa: E402
import psycopg  # noqa: E402

from e2e_latency import DEFAULT_COMMAND, breakdown, row, ts  # noqa: E402  (also puts tests/e2e on sys.path)
from materialize_sent import sent_rows  # noqa: E402
from e2e_harness import Daemon, Simulator, daemon_config, free_port, percentile, wait_for  # noqa: E402
from supervisor.cluster.placement import ranking  # noqa: E402
from tests.pg import PgServer  # noqa: E402


def pair_once(d: Daemon, sim: Simulator, tid: str, out: dict, scan_delay: float) -> None:
    d.start_tenant(tid)
    wait_for(lambda: d.status(tid).get("hasQR"), 60, "qr", interval=0.01)
    qr = d.qr(tid)["qr"]
    time.sleep(scan_delay)  # a person takes seconds to scan: the pre-warmed standby is ready in both modes
    seq = sim.state()["lastEventSeq"]
    t1, w1 = time.monotonic(), time.time()
    res = sim.scan(qr)
    assert res["ok"], res
    wait_for(lambda: d.status(tid).get("connected"), 120, "connected", interval=0.01)
    out["scan_open"].append(time.monotonic() - t1)
    w_seen = time.time()
    events = d.log_events()
    sims = sim.events(seq)
    b = breakdown(events, sims, tid, w1, w_seen, res["jid"])
    if b:
        out["prekeys"].append(b["login -> pre-keys uploaded"])
        out["phases"].append(b)
    commits = [e for e in events if e.get("event") == "cluster.state_committed" and e.get("tenant") == tid
               and w1 - 0.001 <= ts(e) <= w_seen]
    if commits:
        out["tx"].extend(e["tx_ms"] / 1000 for e in commits)
        out["wait"].extend(e["wait_ms"] / 1000 for e in commits)
        out["tx_per_pairing"].append(len(commits))
        out["events_per_pairing"].append(sum(e["events"] for e in commits))
        out["keys_per_pairing"].append(sum(e["keys"] for e in commits))
        # the first login's pre-keys: written (and committed) between the login and their upload
        login = next((e["t"] / 1000 for e in sims if e["type"] == "login" and e.get("jid") == res["jid"]), None)
        pk = next((e["t"] / 1000 for e in sims if e["type"] == "prekeys_uploaded" and e.get("jid") == res["jid"]), None)
        if login is not None and pk is not None:
            inside = [e for e in commits if login <= ts(e) <= pk]
            out["pk_window"].append((len(inside), sum(e["keys"] for e in inside),
                                     round(sum(e["wait_ms"] for e in inside)), round((pk - login) * 1000)))
    d.call("POST", f"/whatsapp/{tid}/stop")
    wait_for(lambda: not d.status(tid).get("pid"), 60, "stopped", interval=0.05)


def server_view(dsn: str) -> tuple[list, list]:
    with psycopg.connect(dsn, autocommit=True) as c:
        conns = c.execute("SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND pid <> pg_backend_pid() GROUP BY 1 ORDER BY 1").fetchall()
        locks = c.execute("SELECT a.application_name, count(*) FROM pg_locks l JOIN pg_stat_activity a "
                          "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND a.datname = current_database() "
                          "GROUP BY 1 ORDER BY 1").fetchall()  # a --pg-variant's node has its own database
    return conns, locks


def marked(marker: str) -> list[int]:
    """Live (non-zombie) processes with `marker` in their argv: one node's workers (e2e_harness.worker_command)."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if marker in (p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(p.pid)
    return out


PHASES = {"cluster.claimed": "claim round (per node)", "cluster.state_materialized": "materialized",
          "worker.spawned": "worker spawned", "worker.hello": "worker hello", "tenant.open": "open (logged in)"}


def kill_run(n: int, seed_rows: int = 0) -> str:
    """--kill N (module docstring); returns the report."""
    # names pg1 ranks first: placement puts them on pg1 and the join logic never hands them to pg2 while both live
    tids = [t for t in (f"k{i}" for i in range(100 * n)) if ranking(t, ["pg1", "pg2"])[0] == "pg1"][:n]
    load0 = os.getloadavg()
    pg, sim, nodes = PgServer(durable=True), None, {}
    marker = f"bsup-kill-{os.getpid()}"
    try:
        pg.start()
        dsn = pg.create_db()
        sim = Simulator()
        with tempfile.TemporaryDirectory(prefix="bsup-bench-") as tmp:
            for name in ("pg1", "pg2"):
                wd = Path(tmp) / name
                cfg = daemon_config(wd / "storage", free_port(), sim.ws_url, marker=f"{marker}-{name}")
                cfg["cluster"] = {"backend": "postgres", "dsn": dsn, "node_id": name}  # shipped timings
                nodes[name] = Daemon(wd, cfg, new_session=True).start(120)  # own group: killpg hits pg1 only
            d1, d2 = nodes["pg1"], nodes["pg2"]
            me = {}
            for t in tids:
                d1.start_tenant(t)
                wait_for(lambda t=t: d1.status(t).get("hasQR"), 120, f"{t} qr on pg1", interval=0.05)
                assert sim.scan(d1.qr(t)["qr"])["ok"]
                me[t] = d1.wait_connected(t, 180)["me"]["id"]

            def settled() -> bool:  # every tenant on pg1 with its linked creds committed (what pg2 will log in with)
                with psycopg.connect(dsn) as c:
                    rows = c.execute("SELECT o.owner, convert_from(k.v, 'UTF8')::jsonb ? 'me' FROM tenant_owner o "
                                     "JOIN tenant_kv k ON k.tenant_id = o.tenant_id AND k.k = 'creds.json' "
                                     "WHERE o.tenant_id = ANY(%s)", (tids,)).fetchall()
                return len(rows) == n and all(o == "pg1" and linked for o, linked in rows)

            wait_for(settled, 120, "all on pg1, linked creds in the store", interval=0.1)
            if seed_rows:  # a busy tenant's 7-day sent store, as pg1's worker would have left it (--sent-rows)
                with psycopg.connect(dsn) as c, c.cursor() as cur:
                    for i, t in enumerate(tids):
                        cur.executemany("INSERT INTO tenant_kv (tenant_id, k, v, epoch) SELECT %s, %s, %s, epoch "
                                        "FROM tenant_owner WHERE tenant_id = %s",
                                        [(t, k, v, t) for k, v in sent_rows(seed_rows, seed=i).items()])
            before = sim.counters()
            reowned, connected = {}, {}
            with psycopg.connect(dsn, autocommit=True) as c:
                t0, w0 = time.monotonic(), time.time()
                os.killpg(d1.pid, signal.SIGKILL)
                while len(connected) < n:
                    now = time.monotonic() - t0
                    assert now < 300, f"not all connected on pg2 within 300 s: {sorted(connected)}"
                    for t, o in c.execute("SELECT tenant_id, owner FROM tenant_owner WHERE tenant_id = ANY(%s)",
                                          (tids,)).fetchall():
                        if o == "pg2":
                            reowned.setdefault(t, now)
                    for st in d2.call("GET", "/whatsapp")[1]["tenants"]:
                        t = st.get("tenant")
                        if t in tids and st.get("owner") == "pg2" and st.get("connected") and st.get("pid"):
                            connected.setdefault(t, time.monotonic() - t0)
                            assert st["me"]["id"] == me[t], (t, st["me"], me[t])
                    time.sleep(0.02)
                last = max(connected.values())
                epochs = dict(c.execute("SELECT tenant_id, count(*) FROM tenant_epoch WHERE tenant_id = ANY(%s) "
                                        "GROUP BY 1", (tids,)).fetchall())
            d1.proc.wait(30)
            left = marked(f"{marker}-pg1")
            events = d2.log_events()
            phases = {k: {} for k in PHASES}  # pg2's log: each tenant's first line of each kind after the kill
            for e in events:
                if e.get("event") in phases and ts(e) >= w0 and (e.get("tenant") in tids or "tenant" not in e):
                    phases[e["event"]].setdefault(e.get("tenant", "node"), ts(e) - w0)
            qrs = [e["tenant"] for e in events if e.get("event") == "tenant.qr" and e.get("tenant") in tids]
            c2, state = sim.counters(), sim.state()
            d2.stop(120)
    finally:
        for d in nodes.values():
            d.stop()
        for pid in marked(marker):  # last resort: a failed run leaks no worker
            psutil.Process(pid).kill()
        if sim is not None:
            sim.stop()
        pg.destroy()
    load1 = os.getloadavg()
    assert not qrs, f"QR shown on pg2: {qrs}"
    assert c2["registrations"] == before["registrations"] == n, (before, c2)
    assert state["maxConcurrentAnyDevice"] == 1, "two live sessions of one device"
    assert not left, f"workers of the killed node left: {left}"
    return "\n".join([
        f"# bench/cluster_state.py --kill {n} --sent-rows {seed_rows}  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  loadavg before "
        f"{load0[0]:.2f}/{load0[1]:.2f}, after {load1[0]:.2f}/{load1[1]:.2f}",
        f"SIGKILL of pg1's process group, {n} tenants paired and connected on it, pg2 running; from the kill:",
        row("re-owned by pg2 (tenant_owner)", list(reowned.values())),
        *(row(f"  pg2 log: {PHASES[k]}", list(v.values())) for k, v in phases.items()),
        row("connected on pg2 (its status)", list(connected.values())),
        f"in order, ms: materialized {sorted(round(x * 1000) for x in phases['cluster.state_materialized'].values())}; "
        f"connected {sorted(round(x * 1000) for x in connected.values())}",
        f"all {n} connected again {last:.2f} s after the kill; QR shown on pg2: {len(qrs)}; registrations "
        f"{before['registrations']} -> {c2['registrations']}, logins {before['logins']} -> {c2['logins']}; "
        f"max concurrent sessions of a device {state['maxConcurrentAnyDevice']}; pg1 workers left {len(left)}; "
        f"claims per tenant (tenant_epoch rows) {sorted(set(epochs.values()))}"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairings", type=int, default=10, help="per mode")
    ap.add_argument("--scan-delay", type=float, default=2.0, help="seconds between the QR and the scan")
    ap.add_argument("--pg-variant", action="append", default=[], metavar="LABEL=JSON",
                    help="one more cluster-mode daemon (its own database) whose worker.command is this JSON argv, "
                         "interleaved with the others, e.g. a patched worker tree")
    ap.add_argument("--keep", type=int, default=5, help="postgres tenants restarted and kept connected at the end "
                    "(>= 2: the joining node takes some)")
    ap.add_argument("--kill", type=int, default=0, metavar="N",
                    help="only the SIGKILL run: N tenants on pg1, pg2 running, pg1 killed (module docstring)")
    ap.add_argument("--sent-rows", type=int, default=0, metavar="R",
                    help="with --kill: sent-store rows per tenant, seeded before the kill (module docstring)")
    args = ap.parse_args()
    if args.kill:
        print(kill_run(args.kill, args.sent_rows))
        return 0
    commands = {"file": DEFAULT_COMMAND, "postgres": DEFAULT_COMMAND}
    for v in args.pg_variant:
        label, argv = v.split("=", 1)
        commands[label] = json.loads(argv)
    modes = tuple(commands)
    load0 = os.getloadavg()
    res = {m: {"scan_open": [], "prekeys": [], "phases": [], "tx": [], "wait": [], "tx_per_pairing": [],
               "events_per_pairing": [], "keys_per_pairing": [], "pk_window": []} for m in modes}
    pg = PgServer(durable=True)
    sim = None
    daemons: dict[str, Daemon] = {}
    try:
        pg.start()
        dsn = pg.create_db()
        sim = Simulator()
        with tempfile.TemporaryDirectory(prefix="bsup-bench-") as tmp:
            for m in modes:
                wd = Path(tmp) / m
                wd.mkdir()
                cfg = daemon_config(wd / "storage", free_port(), sim.ws_url, worker={"command": commands[m]},
                                    restart={"initial_delay": 0.2, "jitter": 0.0})
                cfg["logging"]["level"] = "debug"  # both alike; the postgres one logs each state transaction
                if m != "file":  # each cluster-mode daemon its own database: it must not claim another's tenants
                    cfg["cluster"] = {"backend": "postgres", "dsn": dsn if m == "postgres" else pg.create_db(),
                                      "node_id": "pg1"}
                daemons[m] = Daemon(wd, cfg)
                daemons[m].start(120)
            for i in range(args.pairings):
                for m in (modes[i % len(modes):] + modes[:i % len(modes)]):  # who goes first rotates
                    pair_once(daemons[m], sim, f"s{i}", res[m], args.scan_delay)
                print(f"pairing {i + 1}/{args.pairings}: " + "; ".join(
                    f"{m} {res[m]['scan_open'][-1] * 1000:.0f} ms" for m in modes), file=sys.stderr)
            d = daemons["postgres"]
            keep = [f"s{i}" for i in range(max(0, args.pairings - args.keep), args.pairings)]
            t0 = time.monotonic()
            for t in keep:
                d.start_tenant(t)
            for t in keep:
                wait_for(lambda t=t: d.status(t).get("connected"), 180, f"{t} connected again", interval=0.05)
            t_back = time.monotonic() - t0
            conns, locks = server_view(dsn)
            # a second node joins: pg1 hands tenants off (stopped there, materialized on pg2, login with saved creds)
            wd = Path(tmp) / "postgres2"
            wd.mkdir()
            cfg = daemon_config(wd / "storage", free_port(), sim.ws_url, worker={"command": DEFAULT_COMMAND})
            cfg["cluster"] = {"backend": "postgres", "dsn": dsn, "node_id": "pg2"}
            daemons["postgres2"] = d2 = Daemon(wd, cfg)
            t0 = time.monotonic()
            d2.start(120)
            nodes = {"pg1": d, "pg2": d2}

            def spread() -> dict[str, str] | None:
                where = {}
                for t in keep:
                    owner = d.status(t).get("owner")
                    if owner in nodes and nodes[owner].status(t).get("connected"):
                        where[t] = owner
                return where if len(where) == len(keep) and len(set(where.values())) == min(2, len(keep)) else None

            placed = wait_for(spread, 180, "tenants spread over both nodes, connected", interval=0.1)
            t_join = time.monotonic() - t0
            conns2, locks2 = server_view(dsn)
            c = sim.counters()
            assert c["registrations"] == args.pairings * len(modes) and c["conflicts"] == 0, c
            for dd in daemons.values():
                dd.stop(120)
            daemons.clear()
    finally:
        for dd in daemons.values():
            dd.stop()
        if sim is not None:
            sim.stop()
        pg.destroy()
    load1 = os.getloadavg()
    print(f"# bench/cluster_state.py --pairings {args.pairings} --keep {args.keep} --scan-delay {args.scan_delay:g}  "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}  loadavg before {load0[0]:.2f}/{load0[1]:.2f}, "
          f"after {load1[0]:.2f}/{load1[1]:.2f}")
    for m in modes:
        r = res[m]
        print(f"## {m}")
        print(row("scan -> connected", r["scan_open"]))
        print(row("pre-key upload (login -> uploaded)", r["prekeys"]))
        if r["tx"]:
            print(row("store transaction (per state tx)", r["tx"]))
            print(row("state event wait -> ack", r["wait"]))
            print(f"{'store transactions per pairing':<34} {r['tx_per_pairing']} "
                  f"(state events {r['events_per_pairing']})")
            print(f"{'keys written per pairing':<34} {r['keys_per_pairing']}")
            w = r["pk_window"]
            print(f"{'login -> pre-keys uploaded':<34} per pairing (transactions, keys, ms waited on the store, "
                  f"phase ms): {w}")
            if w:
                print(f"{'':<34} store wait / phase: p50 {percentile([x[2] / max(1, x[3]) for x in w], 50):.2f}")
        if r["phases"]:
            print(f"breakdown (n={len(r['phases'])}):")
            for k in r["phases"][0]:
                xs = [p[k] for p in r["phases"] if p[k] is not None]
                if xs:
                    print("  " + row(k, xs))
    f = percentile(res["file"]["scan_open"], 50)
    for m in modes[1:]:
        p = percentile(res[m]["scan_open"], 50)
        print(f"scan -> connected p50: {m} {p * 1000:.0f} ms vs file {f * 1000:.0f} ms ({(p - f) * 1000:+.0f} ms)")
    print(f"{len(keep)} tenants restarted on the postgres node, all connected again from the store in {t_back:.2f} s; "
          f"server connections by application_name: {conns}; advisory locks: {locks}")
    print(f"node pg2 joined: {dict(sorted(placed.items()))} connected on their owners {t_join:.2f} s after its start; "
          f"server connections: {conns2}; advisory locks: {locks2}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
