"""Forwarding in cluster mode (supervisor/api_forward.py): two real daemons with fake workers on one real PostgreSQL.
A request for a tenant that the other node owns is proxied there: restart/logout/pairing-code act on the owner's
worker, QR is the owner's, an event stream opened on the non-owner carries the owner's events, a send lands once in
the owner's outbox; a SIGSTOPped owner is a 504 within the bound; the loop-guard header is no way around the secret."""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psycopg

from supervisor.api_forward import FORWARDED_BY, FORWARDED_TO, QUICK
from tests.cluster.test_daemon_cluster import H, cluster3, settled  # noqa: F401 - cluster3 is a fixture
from tests.conftest import live_workers
from tests.support import http_json, wait_for
from tests.test_ops_openapi import validate

AB = ("a", "b")
PHONE = "15550001111"  # a made-up number: never a real one in tests


def req(method: str, url: str, body=None, headers=None, timeout: float = 60) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one request."""
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    r = urllib.request.Request(url, method=method, data=data,
                               headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.load(resp)
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), json.load(e)


def two_nodes(cluster3, pg_dsn, marker, tids=("f1", "f2", "f3", "f4")):
    """Both daemons up, the tenants running; (daemons, tenant, its owner, the other node)."""
    d = cluster3(AB)
    for t in tids:
        assert http_json("POST", d["a"].url + f"/whatsapp/{t}/start", headers=H)[0] == 200
    placed = wait_for(lambda: settled(marker, list(tids), pg_dsn, AB), 60, "the tenants running, each on its owner")
    t = tids[0]
    owner = placed[t]
    other = "b" if owner == "a" else "a"
    # the other node's snapshot knows the owner (refreshed every claim_interval)
    wait_for(lambda: http_json("GET", d[other].url + f"/whatsapp/{t}/status", headers=H)[1].get("owner") == owner,
             30, "the owner in the other node's snapshot")
    return d, t, owner, other


def pids_of(marker: str, node: str, tid: str) -> set[int]:
    return {p for p, t in live_workers(f"{marker}-{node}").items() if t == tid}


def test_commands_and_qr_through_a_non_owner_act_on_the_owner(cluster3, pg_dsn, marker):
    d, t, owner, other = two_nodes(cluster3, pg_dsn, marker)
    via = d[other].url + f"/whatsapp/{t}"
    wait_for(lambda: http_json("GET", d[owner].url + f"/whatsapp/{t}/qr", headers=H)[1]["qr"], 30, "the owner's QR")

    status, hdrs, body = req("GET", via + "/qr", headers=H)
    assert status == 200 and body["qr"] == "fake-qr-1" and body["dataUrl"].startswith("data:image/png")
    assert hdrs[FORWARDED_TO] == owner and hdrs["Cache-Control"] == "no-store"
    assert hdrs["Content-Type"].startswith("application/json")
    validate(body, {"$ref": "#/components/schemas/QR"})

    status, hdrs, body = req("POST", via + "/pairing-code", {"phone": PHONE}, headers=H)
    assert status == 200 and body["code"] == "FAKE1234", body

    before = pids_of(marker, owner, t)
    assert len(before) == 1
    status, hdrs, body = req("POST", via + "/restart", headers=H)
    assert status == 200 and hdrs[FORWARDED_TO] == owner and body["pid"] not in before, body
    wait_for(lambda: (lambda p: p and not p & before)(pids_of(marker, owner, t)), 30, "a new worker on the owner")
    assert not pids_of(marker, other, t)  # never a worker on the node that was asked

    status, hdrs, body = req("POST", via + "/logout", headers=H)
    assert status == 200 and body["state"] == "logged_out", body
    assert hdrs[FORWARDED_TO] == owner
    assert http_json("GET", d[owner].url + f"/whatsapp/{t}/status", headers=H)[1]["state"] == "logged_out"
    assert not pids_of(marker, owner, t) and not pids_of(marker, other, t)  # the owner's worker logged out


def read_sse(url: str, headers: dict, out: queue.Queue, stop: threading.Event) -> None:
    """Parse an event stream into `out` (dicts with event/data), until `stop` or the stream ends."""
    r = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(r, timeout=60) as resp:
            out.put({"status": resp.status, "forwardedTo": resp.headers.get(FORWARDED_TO)})
            cur: dict = {}
            for raw in resp:
                if stop.is_set():
                    return
                line = raw.decode().rstrip("\n")
                if not line:
                    if "event" in cur:
                        out.put(cur)
                    cur = {}
                elif not line.startswith(":"):
                    k, _, v = line.partition(": ")
                    cur[k] = json.loads(v) if k == "data" else v
    except Exception as exc:  # noqa: BLE001 - the test reads what happened from the queue
        out.put({"error": repr(exc)})


def test_event_stream_opened_on_a_non_owner_carries_the_owners_events(cluster3, pg_dsn, marker):
    d, t, owner, other = two_nodes(cluster3, pg_dsn, marker)
    # a browser's way: the non-owner issues the token (same secret on every node), the stream carries no secret
    status, body = http_json("POST", d[other].url + f"/whatsapp/{t}/events-token", headers=H)
    assert status == 200
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    reader = threading.Thread(target=read_sse, args=(d[other].url + body["url"], {}, events, stop), daemon=True)
    reader.start()
    try:
        head = events.get(timeout=60)
        assert head.get("status") == 200, head
        snap = events.get(timeout=60)
        assert snap["event"] == "snapshot", snap
        assert snap["data"]["status"]["owner"] == owner and snap["data"]["status"].get("pid"), snap  # the live one
        assert head["forwardedTo"] == owner
        assert http_json("POST", d[owner].url + f"/whatsapp/{t}/restart", headers=H)[0] == 200
        seen = []
        end = time.monotonic() + 60
        while time.monotonic() < end and not any(e.get("event") == "qr" for e in seen):
            seen.append(events.get(timeout=max(0.1, end - time.monotonic())))
        states = [e["data"].get("state") for e in seen if e.get("event") == "state"]
        assert "starting" in states and any(e.get("event") == "qr" for e in seen), seen
        assert all(e["data"]["tenant"] == t for e in seen if "data" in e)
    finally:
        stop.set()


def outbox_rows(dsn: str, tid: str) -> list[tuple]:
    """The tenant's rows in the cluster's one outbox (PostgreSQL: supervisor/cluster/outbox.py)."""
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT message_id, idem_key FROM outbox_msg WHERE tenant_id = %s", (tid,)).fetchall()


def test_a_send_through_a_non_owner_lands_once_in_the_owners_outbox(cluster3, pg_dsn, marker):
    d, t, owner, other = two_nodes(cluster3, pg_dsn, marker)
    msg = {"to": PHONE, "text": "hello through the other node"}
    key = {**H, "Idempotency-Key": "fwd-key-1"}
    status, hdrs, first = req("POST", d[other].url + f"/whatsapp/{t}/messages", msg, headers=key)
    assert status == 202 and "Idempotent-Replayed" not in hdrs, first
    mid = first["messageId"]
    assert req("GET", d[owner].url + f"/whatsapp/{t}/messages/{mid}", headers=H)[0] == 200  # in the owner's outbox
    assert hdrs[FORWARDED_TO] == owner
    for node in (owner, other):  # a retry through either node: the same answer, nothing queued again
        status, hdrs, again = req("POST", d[node].url + f"/whatsapp/{t}/messages", msg, headers=key)
        assert status == 202 and hdrs.get("Idempotent-Replayed") == "true" and again["messageId"] == mid, again
    status, _, found = req("GET", d[other].url + f"/whatsapp/{t}/messages/{mid}", headers=H)
    assert status == 200 and found["messageId"] == mid
    assert outbox_rows(pg_dsn, t) == [(mid, "fwd-key-1")]  # once, though queued through the other node
    assert not (d[other].workdir.parent / f"storage-{other}" / "outbox.sqlite3").exists()  # no per-host outbox
    status, _, body = req("POST", d[other].url + f"/whatsapp/{t}/messages", {**msg, "text": "other"}, headers=key)
    assert status == 409 and body["error"] == "idempotency_conflict"  # the owner's outbox decided


def test_a_sigstopped_owner_is_504_within_the_bound_and_start_falls_back_to_the_store(cluster3, pg_dsn, marker):
    d, t, owner, other = two_nodes(cluster3, pg_dsn, marker)
    via = d[other].url + f"/whatsapp/{t}"

    def timed(method, path, body=None):
        t0 = time.monotonic()
        status, _, answer = req(method, via + path, body, headers={**H, "Idempotency-Key": "k-stopped"})
        return status, answer, time.monotonic() - t0

    d[owner].proc.send_signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(3) as pool:
            qr = pool.submit(timed, "GET", "/qr")
            send = pool.submit(timed, "POST", "/messages", {"to": PHONE, "text": "x"})
            start = pool.submit(timed, "POST", "/start")
            qr, send, start = qr.result(120), send.result(120), start.result(120)
    finally:
        d[owner].proc.send_signal(signal.SIGCONT)
    for status, answer, took in (qr, send):
        assert status == 504 and answer["error"] == "owner_unreachable", answer
        assert answer["owner"] == owner and answer["advertiseUrl"] == d[owner].url
        validate(answer, {"$ref": "#/components/schemas/Error"})
        # it waited for the owner (QUICK), and not much longer (a loose bound for a loaded machine)
        assert QUICK - 0.5 <= took < QUICK + 20, took
    status, answer, took = start
    assert status == 200 and answer["owner"] == owner and answer["wanted"] is True, answer  # the store's answer
    assert took < QUICK + 20
    # the non-owner queued nothing itself; the owner may queue the forwarded POST once it runs again (one outbox)
    assert len(outbox_rows(pg_dsn, t)) <= 1


def test_the_loop_guard_header_is_no_way_around_the_secret(cluster3, pg_dsn, marker):
    d, t, owner, other = two_nodes(cluster3, pg_dsn, marker)
    via = d[other].url + f"/whatsapp/{t}/pairing-code"
    forged = {FORWARDED_BY: owner}
    status, _, body = req("POST", via, {"phone": PHONE}, headers=forged)
    assert status == 401 and body["error"] == "unauthorized"
    status, _, body = req("POST", via, {"phone": PHONE}, headers={**forged, "X-Internal-Secret": "wrong"})
    assert status == 401
    # with the secret, the header only stops forwarding: answered here, as before forwarding existed
    status, hdrs, body = req("POST", via, {"phone": PHONE}, headers={**H, **forged})
    assert status == 409 and body["error"] == "not_owner" and body["owner"] == owner and FORWARDED_TO not in hdrs
    # a Host header naming another address changes nothing: the target is the owner's URL from the store
    status, hdrs, body = req("POST", via, {"phone": PHONE}, headers={**H, "Host": "evil.example:1"})
    assert status == 200 and body["code"] == "FAKE1234" and hdrs[FORWARDED_TO] == owner
    # and the owner saw the forwarded request with the secret (it re-checks auth: no bypass there either)
    ev = [e for e in d[owner].log_events() if e.get("event") == "api.request" and e.get("route", "").endswith(
        "/pairing-code") and e.get("status") == 200]
    assert ev


def test_without_advertise_url_the_answer_stays_409_not_owner(cluster3, pg_dsn, marker):
    """A cluster whose nodes advertise no URL: nothing to forward to, today's 409 with the owner (docs/cluster.md)."""
    d, t, owner, other = two_nodes(lambda names: cluster3(names, advertise_url=None), pg_dsn, marker)
    status, hdrs, body = req("POST", d[other].url + f"/whatsapp/{t}/restart", headers=H)
    assert status == 409 and body["error"] == "not_owner" and body["owner"] == owner and body["advertiseUrl"] is None
    status, hdrs, body = req("GET", d[other].url + f"/whatsapp/{t}/qr", headers=H)
    assert status == 200 and body["qr"] is None and FORWARDED_TO not in hdrs  # the local answer: no QR here


class Recorder(threading.Thread):
    """A plain HTTP listener that records every request it gets (path, headers) and answers 200 {}."""

    def __init__(self) -> None:
        import http.server

        seen = self.seen = []

        class H(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                seen.append((self.command, self.path, dict(self.headers)))
                body = b'{"ok": true, "tenant": "x", "code": "REC00000"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any

            def log_message(self, *a) -> None:
                pass

        super().__init__(daemon=True)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def run(self) -> None:
        self.server.serve_forever(poll_interval=0.1)


def test_only_a_usable_url_from_the_store_is_sent_the_secret(cluster3, pg_dsn, marker):
    import psycopg

    d, t, owner, other = two_nodes(cluster3, pg_dsn, marker)
    rec = Recorder()
    rec.start()
    via = d[other].url + f"/whatsapp/{t}/pairing-code"

    def advertise(url: str) -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            c.execute("UPDATE cluster_node SET advertise_url = %s WHERE node_id = %s", (url, owner))
        wait_for(lambda: http_json("GET", d[other].url + f"/whatsapp/{t}/status", headers=H)[1].get(
            "advertiseUrl") == url, 30, "the new URL in the snapshot")

    try:
        host_port = rec.url.removeprefix("http://")
        for bad in (f"http://user:pw@{host_port}", f"ftp://{host_port}", f"{rec.url}/?x=1", f"{rec.url}/#f"):
            advertise(bad)
            status, hdrs, body = req("POST", via, {"phone": PHONE}, headers={**H, "X-Forwarded-Host": host_port})
            assert status == 409 and body["error"] == "not_owner", (bad, body)
        assert rec.seen == []  # not one request, so never the secret
        # the check can see a forward: a usable URL in the store is where the request goes (path and query kept)
        advertise(rec.url + "/prefix")
        status, hdrs, body = req("POST", via + "?a=1", {"phone": PHONE}, headers=H)
        assert status == 200 and body["code"] == "REC00000" and hdrs[FORWARDED_TO] == owner
        (method, path, headers), = rec.seen
        assert (method, path) == ("POST", f"/prefix/whatsapp/{t}/pairing-code?a=1")
        assert headers["X-Internal-Secret"] == H["X-Internal-Secret"] and headers[FORWARDED_BY] == other
    finally:
        rec.server.shutdown()


def test_a_proxied_stream_ends_when_the_owner_leaves_and_the_reconnect_follows_the_tenant(cluster3, pg_dsn, marker):
    """SIGTERM drains the owner: its streams end, so does the proxied one (no stream left hanging on a node that no
    longer serves the tenant), and the client's reconnect through the same node reaches the tenant's new home."""
    d, t, owner, other = two_nodes(cluster3, pg_dsn, marker)
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    url = d[other].url + f"/whatsapp/{t}/events"
    reader = threading.Thread(target=read_sse, args=(url, H, events, stop), daemon=True)
    reader.start()
    try:
        assert events.get(timeout=60).get("forwardedTo") == owner
        assert events.get(timeout=60)["event"] == "snapshot"
        assert d[owner].stop(60) == 0
        reader.join(60)
        assert not reader.is_alive(), "the proxied stream is still open after its owner left"
        wait_for(lambda: settled(marker, [t, "f2", "f3", "f4"], pg_dsn, (other,)), 60, "the tenants on the last node")
        again: queue.Queue = queue.Queue()
        threading.Thread(target=read_sse, args=(url, H, again, stop), daemon=True).start()
        head = again.get(timeout=60)
        assert head.get("status") == 200 and head["forwardedTo"] is None  # served here now
        snap = again.get(timeout=60)
        assert snap["data"]["status"]["owner"] == other and snap["data"]["status"].get("pid")
    finally:
        stop.set()
