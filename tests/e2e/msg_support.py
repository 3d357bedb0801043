"""What the incoming-message e2e tests share: a local webhook receiver (a real HTTP server the daemon POSTs to), a
daemon with the webhook on, and the simulator's message routes (tests/wa_sim/README.md "Messages")."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .e2e_harness import Daemon, Simulator, daemon_config, free_port, wait_for


class Receiver:
    """The web app: records every POST (Idempotency-Key + JSON body) and answers `status` (503 = "down")."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.status_for: dict[str, int] = {}  # tenant -> status, overrides `status` (one slow/failing tenant)
        self.delay = 0.0  # seconds each answer waits after the request is recorded (a sender may die meanwhile)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                tenant = json.loads(body).get("tenantId")
                status = receiver.status_for.get(tenant, receiver.status)
                if status == 200:
                    with receiver.lock:
                        receiver.requests.append({"key": self.headers.get("Idempotency-Key"),
                                                  "body": json.loads(body), "t": time.monotonic()})
                time.sleep(receiver.delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone (a SIGKILLed daemon): it never saw the answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def messages(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every delivered `message` item: {key, tenant, id (WhatsApp id), text, upsertType, recovered, stub}."""
        out = []
        with self.lock:
            reqs = list(self.requests)
        for r in reqs:
            p = r["body"]["payload"]
            if p.get("type") != "message" or (tenant and r["body"]["tenantId"] != tenant):
                continue
            [m] = p["messages"]  # exactly one message per item
            if m["key"].get("fromMe"):
                continue  # the tenant's own sends (docs/webhook.md): see sent_copies()
            msg = m.get("message") or {}
            out.append({"key": r["key"], "tenant": r["body"]["tenantId"], "id": m["key"]["id"],
                        "text": msg.get("conversation"), "upsertType": p.get("upsertType"),
                        "recovered": p.get("recovered"), "stub": m.get("messageStubType"), "eventId": p["eventId"],
                        "t": r["t"]})
        return out

    def sent_copies(self, tenant: str) -> list[dict[str, Any]]:
        """The `message` items of the tenant's own sends (`key.fromMe`)."""
        with self.lock:
            reqs = list(self.requests)
        return [m for r in reqs if r["body"]["tenantId"] == tenant and r["body"]["payload"].get("type") == "message"
                for m in r["body"]["payload"]["messages"] if m["key"].get("fromMe")]

    def texts(self, tenant: str | None = None) -> list[str]:
        return [m["text"] for m in self.messages(tenant)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_daemon_with_webhook(tmp: Path, sim: Simulator, receiver: Receiver, marker: str, *, worker_env=None,
                             webhook: dict[str, Any] | None = None, name: str = "d") -> Daemon:
    workdir = tmp / name
    workdir.mkdir(exist_ok=True)
    cfg = daemon_config(tmp / "storage", free_port(), sim.ws_url, marker=marker,
                        worker={"env": worker_env or {}},
                        restart={"stable_after": 1.0, "initial_delay": 0.05, "max_delay": 0.3})
    cfg["webhook"] = {"url": receiver.url, "secret": "", "initial_delay": 0.05, "max_delay": 0.3, "jitter": 0.0,
                      **(webhook or {})}
    d = Daemon(workdir, cfg)
    d.start()
    return d


class Contacts:
    """The simulator's contacts: create one, make it send, read the server's view of a device's queue."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def new(self, name: str) -> str:
        res = self.sim.call("POST", "/contacts", {"pushName": name})
        assert res.get("ok"), res
        return res["phone"]

    def send(self, phone: str, to: str, text: str, addressing: str = "pn") -> dict[str, Any]:
        res = self.sim.call("POST", "/contacts/send", {"from": phone, "to": to, "text": text, "addressing": addressing})
        assert res.get("ok"), res
        return res

    def device(self, jid: str) -> dict[str, Any]:
        return self.sim.call("GET", "/mailbox")["devices"].get(jid) or {"queue": [], "stats": {}}

    def error_acks(self, jid: str) -> dict[str, int]:
        return self.device(jid)["stats"].get("errorAcks") or {}

    def receipts(self, jid: str) -> int:
        return sum((self.device(jid)["stats"].get("receipts") or {}).values())

    def queued(self, jid: str) -> int:
        return len(self.device(jid)["queue"])


def wait_texts(receiver: Receiver, want: list[str], timeout: float, tenant: str | None = None,
               what: str = "webhook") -> None:
    def done() -> bool:
        got = set(receiver.texts(tenant))
        return all(t in got for t in want)

    try:
        wait_for(done, timeout, what, interval=0.1)
    except TimeoutError:
        missing = sorted(set(want) - set(receiver.texts(tenant)))
        raise AssertionError(f"{what}: {len(missing)} of {len(want)} never arrived, e.g. {missing[:5]}") from None


def assert_one_id_per_message(receiver: Receiver, tenant: str | None = None) -> dict[str, str]:
    """Each WhatsApp message id reached the webhook under exactly one Idempotency-Key (duplicates are allowed, with
    the same key), and never as a stub. Returns {wa id: key}."""
    keys: dict[str, set[str]] = {}
    for m in receiver.messages(tenant):
        assert m["stub"] in (None, 0), f"stub delivered: {m}"
        keys.setdefault(m["id"], set()).add(m["key"])
    bad = {k: v for k, v in keys.items() if len(v) != 1}
    assert not bad, f"messages with several ids: {bad}"
    return {k: next(iter(v)) for k, v in keys.items()}


Pred = Callable[[], Any]
