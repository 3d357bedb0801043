"""Incoming messages with the real parts (simulator contacts with real Signal sessions -> real worker + Baileys with
its decrypt journal -> `baileys-supervisor run` -> spool -> a local HTTP receiver), measured from outside:

  latency      contact send (before the simulator's POST /contacts/send) -> the webhook request received, at a
               steady --rate msg/s (default 10) for --count messages; p50/p95/max
  sustained    --burst messages queued while the tenant is stopped, then started: first -> last webhook arrival,
               msg/s through decrypt + journal + receipt + upsert + line + spool + ack + POST (one tenant);
               `intake_msg_s`: the worker's part alone, the rate the simulator's queue for the tenant drains at
               (a message leaves it on the worker's receipt), polled every 0.1 s

Both with the journal on (the default) and off (BSUP_JOURNAL=off, the baseline), in the same invocation, so the
journal's cost is a ratio measured on the same machine at the same time.

    .venv/bin/python bench/messages_in.py [--count 100] [--rate 10] [--burst 300] [--modes on,off] [--env K=V ...]
    .venv/bin/python bench/messages_in.py --cluster [...]    # modes files,cluster: the journal in files vs in PostgreSQL

--cluster: both modes with the journal on; `files` is the single-host daemon (the journal's fdatasync), `cluster` a
one-node cluster on a throwaway **durable** PostgreSQL started like tests/pg.py does (fsync on, as
bench/cluster_state.py): every decrypt waits for its entry's fenced commit through the daemon (docs/cluster.md "The
decrypt journal and the sent store"), and the webhook spool is PostgreSQL's too. Prints `uptime`'s load with each mode.

--env sets a worker environment variable in every mode (e.g. BSUP_JOURNAL_MAX_UNACKED=1000: how much of the
journal's cost is its backpressure waiting for the daemon's acks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.e2e_harness import Simulator, pair, percentile, wait_for  # noqa: E402
from tests.e2e.msg_support import Contacts, Receiver, make_daemon_with_webhook  # noqa: E402


def cluster_daemon(tmp: Path, sim: Simulator, receiver: Receiver, env: dict, dsn: str):
    """make_daemon_with_webhook's daemon as a one-node cluster on `dsn`."""
    from tests.e2e.e2e_harness import Daemon, daemon_config, free_port

    cfg = daemon_config(tmp / "storage", free_port(), sim.ws_url, marker="bsup-bench-messages-in",
                        worker={"env": env}, restart={"stable_after": 1.0, "initial_delay": 0.05, "max_delay": 0.3})
    cfg["webhook"] = {"url": receiver.url, "secret": "", "initial_delay": 0.05, "max_delay": 0.3, "jitter": 0.0}
    cfg["cluster"] = {"backend": "postgres", "dsn": dsn, "node_id": "bench"}  # shipped timings
    cfg["logging"]["level"] = "debug"  # cluster.state_committed: one line per store transaction
    (tmp / "d").mkdir(exist_ok=True)
    return Daemon(tmp / "d", cfg).start(120)


def run(mode: str, args: argparse.Namespace, dsn: str | None = None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-msgs-{mode}-"))
    sim = Simulator(log_path=tmp / "sim.log")
    receiver = Receiver()
    d = None
    load0 = os.getloadavg()
    try:
        if dsn is not None:
            d = cluster_daemon(tmp, sim, receiver, {**args.env, "BSUP_JOURNAL": "on"}, dsn)
        else:
            journal = "on" if mode == "files" else mode
            d = make_daemon_with_webhook(tmp, sim, receiver, "bsup-bench-messages-in",
                                         worker_env={**args.env, "BSUP_JOURNAL": journal})
        if dsn is None:
            jid = pair(d, sim, "t")["scan"]["jid"]
        else:  # the status says nothing of a QR until the node owns the tenant
            d.start_tenant("t")
            d.wait_status("t", lambda s: s.get("hasQR"), 120, "hasQR")
            jid = sim.scan(d.qr("t")["qr"])["jid"]
            d.wait_connected("t")
        contacts = Contacts(sim)
        bob = contacts.new("Bob")
        contacts.send(bob, jid, "warm-up")
        wait_for(lambda: "warm-up" in receiver.texts("t"), 30, "warm-up")

        sent: dict[str, float] = {}
        t_next = time.monotonic()
        for i in range(args.count):
            t_next += 1.0 / args.rate
            time.sleep(max(0.0, t_next - time.monotonic()))
            text = f"lat {i:04d}"
            sent[text] = time.monotonic()
            contacts.send(bob, jid, text)
        wait_for(lambda: all(t in set(receiver.texts("t")) for t in sent), 60, "latency messages")
        got = {m["text"]: m["t"] for m in receiver.messages("t") if m["text"] in sent}
        lat = [(got[t] - sent[t]) * 1000 for t in sent]

        code, body = d.call("POST", "/whatsapp/t/stop")
        assert code == 200, body
        # cluster mode: the owner stops the worker and releases the row in the background; the burst must queue
        d.wait_status("t", lambda s: s.get("state") == "stopped" and not s.get("pid"), 120, "stopped")
        burst = [f"burst {i:05d}" for i in range(args.burst)]
        for t in burst:
            contacts.send(bob, jid, t)
        queue_len: list[tuple[float, int]] = []
        done = threading.Event()

        def poll_queue() -> None:
            while not done.is_set():
                q = sim.call("GET", "/mailbox")["devices"].get(jid, {}).get("queue", [])
                queue_len.append((time.monotonic(), len(q)))
                if not q:
                    return
                done.wait(0.1)

        poller = threading.Thread(target=poll_queue, daemon=True)
        d.start_tenant("t")
        poller.start()
        wait_for(lambda: all(t in set(receiver.texts("t")) for t in burst), 300, "burst", interval=0.2)
        done.set()
        poller.join(5)
        # From the last poll that saw the whole burst queued to the first that saw the queue empty.
        t_start = max((t for t, n in queue_len if n >= len(burst)), default=queue_len[0][0])
        t_end = min((t for t, n in queue_len if n == 0), default=float("nan"))
        intake = len(burst) / (t_end - t_start) if t_end > t_start else float("nan")
        times = sorted(m["t"] for m in receiver.messages("t") if m["text"] in set(burst))
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
        extra = {}
        if dsn is not None:  # store transactions of the whole run (pairing included) per message
            tx = [e for e in d.log_events() if e.get("event") == "cluster.state_committed"]
            extra = {"store_tx": len(tx), "messages": 1 + args.count + args.burst}
        return {**extra, "mode": mode, "latency_ms": {"p50": round(percentile(lat, 50), 1), "p95": round(percentile(lat, 95), 1),
                                             "max": round(max(lat), 1), "n": len(lat)},
                "sustained_msg_s": round(rate, 1), "intake_msg_s": round(intake, 1), "burst": len(times),
                "load": [round(x, 1) for x in load0], "load_end": [round(x, 1) for x in os.getloadavg()]}
    finally:
        if d is not None:
            d.stop()
        sim.stop()
        receiver.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--burst", type=int, default=300)
    ap.add_argument("--modes", default="on,off")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="worker environment, repeatable")
    ap.add_argument("--cluster", action="store_true", help="modes files,cluster (module docstring)")
    args = ap.parse_args()
    if any("=" not in kv for kv in args.env):
        ap.error("--env takes K=V")
    args.env = dict(kv.split("=", 1) for kv in args.env)
    if args.cluster:
        from tests.pg import PgServer

        pg = PgServer(durable=True)
        try:
            pg.start()
            results = [run("files", args), run("cluster", args, pg.create_db())]
        finally:
            pg.destroy()
        for r in results:
            print(json.dumps(r))
        files, cl = results
        print(json.dumps({"cluster_vs_files": {
            "p50_ratio": round(cl["latency_ms"]["p50"] / files["latency_ms"]["p50"], 2),
            "sustained_ratio": round(cl["sustained_msg_s"] / files["sustained_msg_s"], 2),
            "intake_ratio": round(cl["intake_msg_s"] / files["intake_msg_s"], 2)}}))
        return
    results = [run(m, args) for m in args.modes.split(",")]
    for r in results:
        print(json.dumps(r))
    if len(results) == 2:
        on, off = results
        print(json.dumps({"journal_cost": {
            "p50_ratio_on_off": round(on["latency_ms"]["p50"] / off["latency_ms"]["p50"], 2),
            "sustained_ratio_on_off": round(on["sustained_msg_s"] / off["sustained_msg_s"], 2),
            "intake_ratio_on_off": round(on["intake_msg_s"] / off["intake_msg_s"], 2)}}))


if __name__ == "__main__":
    main()
