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
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402

from e2e_latency import DEFAULT_COMMAND, breakdown, row, ts  # noqa: E402  (also puts tests/e2e on sys.path)
from e2e_harness import Daemon, Simulator, daemon_config, free_port, percentile, wait_for  # noqa: E402
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairings", type=int, default=10, help="per mode")
    ap.add_argument("--scan-delay", type=float, default=2.0, help="seconds between the QR and the scan")
    ap.add_argument("--pg-variant", action="append", default=[], metavar="LABEL=JSON",
                    help="one more cluster-mode daemon (its own database) whose worker.command is this JSON argv, "
                         "interleaved with the others, e.g. a patched worker tree")
    ap.add_argument("--keep", type=int, default=5, help="postgres tenants restarted and kept connected at the end "
                    "(>= 2: the joining node takes some)")
    args = ap.parse_args()
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
