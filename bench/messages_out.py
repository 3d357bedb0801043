"""Sending through the daemon (issue 11): the real parts (simulator + `baileys-supervisor run` + real workers + real
Baileys), measured from outside as the web app sees them.

  POST -> server ack   one message at a time to one tenant: POST /whatsapp/{t}/messages until the SSE
                       `message_status` event `sent` (the simulator's `<ack class=message>` reached the daemon)
  throughput           `--messages` per tenant POSTed to `--tenants` tenants at once; messages/s from the first POST
                       to the last `sent` event (outbox.rate is raised out of the way: this measures the pipeline)

Baseline in the same run: `--floor N` sends with Baileys in-process (tests/wa_sim/harness.mjs: one paired client, no
daemon, no worker protocol, no outbox) against the same simulator, `sendMessage` until the server's ack.

    .venv/bin/python bench/messages_out.py [--tenants 20] [--messages 20] [--latency 50] [--floor 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from e2e_harness import Daemon, Simulator, daemon_config, free_port, pair, percentile  # noqa: E402

FLOOR_JS = r"""
import { pairAndLogin, MESSAGING_CLIENT } from './tests/wa_sim/harness.mjs';
// -e: no script name in argv
const [wsUrl, controlUrl, n] = [process.argv[1], process.argv[2], Number(process.argv[3])];
const control = async (m, p, b) => (await fetch(controlUrl + p, {
  method: m, headers: { 'content-type': 'application/json' }, body: b ? JSON.stringify(b) : undefined })).json();
const sim = { wsUrl, scan: (qr, extra = {}) => control('POST', '/scan', { qr, ...extra }) };
const r = await pairAndLogin(sim, MESSAGING_CLIENT);
const c = await control('POST', '/contacts', {});
const acks = new Map();
r.client.sock.ws.on('CB:ack,class:message', (node) => acks.get(node.attrs.id)?.());
const out = [];
for (let i = 0; i < n; i++) {
  const id = '3EB0FLOOR' + String(i).padStart(13, '0');
  const acked = new Promise((resolve) => acks.set(id, resolve));
  const t0 = performance.now();
  await r.client.sock.sendMessage(c.jid, { text: 'floor ' + i, linkPreview: null }, { messageId: id });
  await acked;
  out.push(performance.now() - t0);
}
process.stdout.write(JSON.stringify(out) + '\n');
await r.client.sock.end(undefined);
process.exit(0);
"""


def post(url: str, tid: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(f"{url}/whatsapp/{tid}/messages", method="POST", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", "Idempotency-Key": key})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


class SentWatcher:
    """The daemon's SSE stream (all tenants), in a thread: messageId -> monotonic time of its `sent` event."""

    def __init__(self, url: str) -> None:
        self.sent: dict[str, float] = {}
        self.cond = threading.Condition()
        self.resp = urllib.request.urlopen(f"{url}/events", timeout=600)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        etype = None
        for raw in self.resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                etype = line[7:]
            elif line.startswith("data: ") and etype == "message_status":
                ev = json.loads(line[6:])
                if ev["status"] in ("sent", "failed"):
                    with self.cond:
                        self.sent[ev["messageId"]] = time.monotonic()
                        self.cond.notify_all()

    def wait(self, ids: list[str], timeout: float = 300) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: all(i in self.sent for i in ids), timeout):
                raise TimeoutError(f"{sum(i not in self.sent for i in ids)} of {len(ids)} not sent")


def floor(sim: Simulator, n: int) -> list[float]:
    out = subprocess.run(["node", "--input-type=module", "-e", FLOOR_JS, sim.ws_url, sim.control, str(n)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"floor failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stats(ms: list[float]) -> str:
    return f"p50 {percentile(ms, 50):.1f} ms, p95 {percentile(ms, 95):.1f} ms, n={len(ms)}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=20)
    ap.add_argument("--messages", type=int, default=20, help="per tenant, for the throughput run")
    ap.add_argument("--latency", type=int, default=50, help="sequential sends for POST -> server ack")
    ap.add_argument("--floor", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sim = Simulator(log_path=Path(tmp) / "sim.log")
        cfg = daemon_config(Path(tmp) / "storage", free_port(), sim.ws_url)
        cfg["outbox"] = {"rate": 10000.0, "burst": 10000}
        cfg["logging"]["level"] = "warning"
        (Path(tmp) / "d").mkdir()
        d = Daemon(Path(tmp) / "d", cfg)
        try:
            d.start()
            base = floor(sim, args.floor) if args.floor else []
            t0 = time.monotonic()
            tids = [f"t{i}" for i in range(args.tenants)]
            for tid in tids:
                pair(d, sim, tid, timeout=60)
            print(f"paired {len(tids)} tenants in {time.monotonic() - t0:.1f} s")
            contacts = [sim.call("POST", "/contacts", {}) for _ in tids]
            watcher = SentWatcher(d.url)
            lat = []
            for i in range(args.latency):
                t = time.monotonic()
                mid = post(d.url, tids[0], f"lat-{i}", {"to": contacts[0]["jid"], "text": f"latency {i}"})["messageId"]
                watcher.wait([mid], 60)
                lat.append((watcher.sent[mid] - t) * 1000)
            print(f"POST -> server ack (daemon, one tenant): {stats(lat)}")
            if base:
                print(f"baseline, Baileys in-process sendMessage -> server ack: {stats(base)}; "
                      f"ratio p50 {percentile(lat, 50) / percentile(base, 50):.2f}")

            def burst(i: int) -> list[str]:
                return [post(d.url, tids[i], f"tp-{i}-{k}", {"to": contacts[i]["jid"], "text": f"{i}/{k}"})["messageId"]
                        for k in range(args.messages)]

            t = time.monotonic()
            with ThreadPoolExecutor(len(tids)) as pool:
                ids = [m for ms in pool.map(burst, range(len(tids))) for m in ms]
            posted = time.monotonic()
            watcher.wait(ids, 600)
            last = max(watcher.sent[m] for m in ids)
            n = len(ids)
            print(f"throughput: {n} messages to {len(tids)} tenants: POSTs done in {posted - t:.2f} s, all sent after "
                  f"{last - t:.2f} s = {n / (last - t):.1f} msg/s")
            inbox = sum(len(sim.call("GET", f"/contacts/inbox?contact={c['phone']}")["messages"]) for c in contacts)
            print(f"contacts decrypted {inbox} messages (expected {n + args.latency})")
        finally:
            d.stop()
            sim.stop()


if __name__ == "__main__":
    main()
