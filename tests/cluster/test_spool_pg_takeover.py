"""Webhook delivery from the shared spool (supervisor/cluster/spool.py), end to end: two real daemon processes on one
real PostgreSQL, fake workers, a loopback webhook receiver. Node a spools a tenant's messages while the receiver is
down and is SIGKILLed; node b takes the tenant over and, once the receiver is up, delivers every item a left, in
order, once per event id. b's worker emits nothing: whatever arrives came from a's spooled rows."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from tests.cluster.procs import owners
from tests.conftest import kill_marked, live_workers
from tests.support import DaemonProcess, fake_config, free_port, http_json, wait_for

SECRET = "s3cret-spool"
H = {"X-Internal-Secret": SECRET}
N = 6


def msg(i: int) -> dict:
    return {"emit": {"type": "message", "upsertType": "notify", "ref": f"r{i}",
                     "messages": [{"key": {"remoteJid": "peer@s.whatsapp.net", "id": f"M{i}"}, "n": i}]}}


class Receiver:
    """The web app's webhook endpoint: records (Idempotency-Key, body) of every POST and answers 200."""

    def __init__(self, port: int) -> None:
        got = self.got = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                got.append((self.headers["Idempotency-Key"], body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def pending(dsn: str, tenant: str) -> int:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT count(*) FROM webhook_pending WHERE tenant_id = %s", (tenant,)).fetchone()[0]


@pytest.mark.timeout(300)
def test_items_of_a_dead_node_are_delivered_once_by_the_new_owner(pg_dsn, tmp_path, marker):
    hook_port = free_port()
    scripts = {"a": [{"hello": {}}, *(msg(i) for i in range(N)), {"wait": True}],
               "b": [{"hello": {}}, {"wait": True}]}  # b's worker brings no message of its own
    daemons: dict[str, DaemonProcess] = {}
    receiver = None

    def start(n: str) -> DaemonProcess:
        port = free_port()
        state = tmp_path / f"state-{n}"
        state.mkdir()
        cfg = fake_config(tmp_path / f"storage-{n}", state, f"{marker}-{n}", scripts[n], port=port, secret=SECRET,
                          cluster={"backend": "postgres", "dsn": pg_dsn, "node_id": n,
                                   "advertise_url": f"http://127.0.0.1:{port}", "ping_interval": 0.5,
                                   "fence_after": 4, "release_after": 10, "claim_interval": 0.3},
                          webhook={"url": f"http://127.0.0.1:{hook_port}/hook", "initial_delay": 0.05,
                                   "max_delay": 0.3, "jitter": 0.0})
        daemons[n] = DaemonProcess(tmp_path / f"node-{n}", cfg).start(timeout=60)
        return daemons[n]

    try:
        a = start("a")
        status, body = http_json("POST", a.url + "/whatsapp/t1/start", headers=H)
        assert status == 200, body
        # the receiver is down: a spools all N (each committed at a's epoch) and keeps retrying the first
        wait_for(lambda: pending(pg_dsn, "t1") == N, 60, "a's N messages in the shared spool")
        with psycopg.connect(pg_dsn) as c:
            epochs = {r[0] for r in c.execute("SELECT epoch FROM webhook_pending")}
        assert epochs == {owners(pg_dsn)["t1"][1]} and owners(pg_dsn)["t1"][0] == "a"
        b = start("b")
        a.kill9()
        wait_for(lambda: owners(pg_dsn)["t1"][0] == "b" and live_workers(f"{marker}-b")
                 and not live_workers(f"{marker}-a"), 60, "t1 taken over by b, a's worker gone")
        receiver = Receiver(hook_port)
        wait_for(lambda: pending(pg_dsn, "t1") == 0, 60, "b delivered what a spooled")
        keys = [k for k, _ in receiver.got]
        assert Counter(keys).most_common(1)[0][1] == 1, keys  # once per event id: no duplicate
        assert len(keys) == N
        assert [body["payload"]["messages"][0]["n"] for _, body in receiver.got] == list(range(N))  # in order
        assert all(body["payload"]["eventId"] == k and body["tenantId"] == "t1" for k, body in receiver.got)
        events = [e for e in b.log_events() if e.get("event") == "webhook.delivered"]
        assert len(events) == N
    finally:
        if receiver is not None:
            receiver.close()
        for d in daemons.values():
            d.stop()
        for n in ("a", "b"):
            kill_marked(f"{marker}-{n}")
