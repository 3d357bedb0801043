"""A dead owner's tenant re-owned by a third node (supervisor/api_forward.py `_owner_down`, `_second_hop`): three real
daemons, fake workers, real PostgreSQL. Node b's snapshot is kept stale on purpose (claim rounds, and with them its
snapshot refresh, 60 s apart): it still names the killed owner a when c has already taken the tenant over. The
forward to a fails, the store says a is dead, b's nudged rounds do not take the tenant (placement gives it to c), and
the store, read again, names c: the request (QR, a send with its body, the event stream) is forwarded there once and
answered by c, not 503 `owner_down`."""

from __future__ import annotations

import queue
import signal
import threading

from supervisor.api_forward import FORWARDED_TO
from supervisor.cluster.placement import ranking
from tests.cluster.procs import owners
from tests.cluster.test_daemon_cluster import H, cluster3, settled  # noqa: F401 - cluster3 is a fixture
from tests.cluster.test_forward import PHONE, read_sse, req
from tests.support import http_json, wait_for

STALE = 60.0  # s: b's claim_interval, so its snapshot is not refreshed during the test (its refresh waits this long)


def steered_tenant() -> str:
    """A tenant that placement puts on a while a is alive, and on c (not b) once a is dead."""
    return next(t for t in (f"s{i}" for i in range(1000))
                if ranking(t, ["a", "b", "c"])[0] == "a" and ranking(t, ["b", "c"])[0] == "c")


def test_a_dead_owners_tenant_taken_by_a_third_node_is_forwarded_there(cluster3, pg_dsn, marker):
    t = steered_tenant()
    d = cluster3(("a", "c"))
    assert http_json("POST", d["a"].url + f"/whatsapp/{t}/start", headers=H)[0] == 200
    wait_for(lambda: (settled(marker, [t], pg_dsn, ("a", "c")) or {}).get(t) == "a", 60, "the tenant running on a")
    cluster3(("b",), claim_interval=STALE)  # its first snapshot (at start) names a; the next one is STALE s away
    assert http_json("GET", d["b"].url + f"/whatsapp/{t}/status", headers=H)[1]["owner"] == "a"
    epoch_a = owners(pg_dsn)[t][1]

    d["a"].proc.send_signal(signal.SIGKILL)
    d["a"].proc.wait(30)
    wait_for(lambda: owners(pg_dsn)[t][0] == "c", 30, "c took the dead owner's tenant over")
    assert owners(pg_dsn)[t][1] > epoch_a
    assert http_json("GET", d["b"].url + f"/whatsapp/{t}/status", headers=H)[1]["owner"] == "a"  # still stale

    status, hdrs, body = req("GET", d["b"].url + f"/whatsapp/{t}/qr", headers=H)
    assert status == 200 and hdrs.get(FORWARDED_TO) == "c" and body["tenant"] == t, (status, hdrs, body)
    # a body goes on the second hop too: the send lands in the shared outbox through c
    key = {**H, "Idempotency-Key": "third-node-1"}
    status, hdrs, body = req("POST", d["b"].url + f"/whatsapp/{t}/messages", {"to": PHONE, "text": "x"}, headers=key)
    assert status == 202 and hdrs.get(FORWARDED_TO) == "c" and body["messageId"], (status, body)
    # and the tenant's event stream: c's live snapshot, streamed through b
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    threading.Thread(target=read_sse, args=(d["b"].url + f"/whatsapp/{t}/events", H, events, stop), daemon=True).start()
    try:
        head = events.get(timeout=60)
        assert head.get("status") == 200 and head["forwardedTo"] == "c", head
        snap = events.get(timeout=60)
        assert snap["event"] == "snapshot" and snap["data"]["status"]["owner"] == "c", snap
    finally:
        stop.set()
    assert owners(pg_dsn)[t][0] == "c"  # b never took it (it only forwarded), a never came back
