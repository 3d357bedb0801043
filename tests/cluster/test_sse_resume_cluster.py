"""An event stream resumed after its tenant moved (two real daemons, fake workers, real PostgreSQL): the client's
Last-Event-ID is the old owner's; the new owner recognises it as foreign and answers `reset` then `snapshot` (its own
live status), never a replay of its own unrelated events as if they followed that id (docs/events.md "Resuming")."""

from __future__ import annotations

import queue
import threading

from tests.cluster.test_daemon_cluster import H, cluster3, settled  # noqa: F401 - cluster3 is a fixture
from tests.cluster.test_forward import read_sse, two_nodes
from tests.support import http_json, wait_for


def test_a_resume_after_the_move_gets_reset_then_the_new_owners_snapshot(cluster3, pg_dsn, marker):
    d, t, owner, other = two_nodes(cluster3, pg_dsn, marker)
    stop = threading.Event()
    events: queue.Queue = queue.Queue()
    url = d[other].url + f"/whatsapp/{t}/events"  # through the non-owner: the owner's events and ids
    threading.Thread(target=read_sse, args=(url, H, events, stop), daemon=True).start()
    try:
        assert events.get(timeout=60).get("status") == 200
        assert events.get(timeout=60)["event"] == "snapshot"
        assert http_json("POST", d[owner].url + f"/whatsapp/{t}/restart", headers=H)[0] == 200
        last = None
        while last is None:
            ev = events.get(timeout=60)
            if ev.get("event") == "qr":
                last = ev["id"]  # the owner's id, as an EventSource keeps it
        assert d[owner].stop(60) == 0  # SIGTERM: drained, the tenant moves to the other node
        wait_for(lambda: settled(marker, [t, "f2", "f3", "f4"], pg_dsn, (other,)), 60, "the tenants on the last node")
        again: queue.Queue = queue.Queue()
        threading.Thread(target=read_sse, args=(url, {**H, "Last-Event-ID": last}, again, stop), daemon=True).start()
        head = again.get(timeout=60)
        assert head.get("status") == 200 and head["forwardedTo"] is None  # served by the new owner itself
        reset, snap = again.get(timeout=60), again.get(timeout=60)
        assert reset["event"] == "reset" and reset["data"]["reason"] == "unknown_id", reset
        assert snap["event"] == "snapshot" and snap["data"]["status"]["owner"] == other, snap
    finally:
        stop.set()
