"""A queued outgoing message is sent once across a takeover (issue 13): two real daemons with fake workers on one
real PostgreSQL. Messages are queued (through both nodes) for a tenant whose worker is not connected; the owner
daemon is SIGKILLed; the other node takes the tenant over, its worker connects, and each message reaches a worker
exactly once (counted at the fake workers, tests/fake_worker.py `sends.jsonl`), with its derived WhatsApp id; the
status answers from either node, also from the killed node once it is back."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from supervisor.outbox import derive_ids
from tests.cluster.test_daemon_cluster import H, settled
from tests.conftest import kill_marked, live_workers
from tests.support import DaemonProcess, fake_config, free_port, http_json, wait_for

SECRET = H["X-Internal-Secret"]
NODES = ("a", "b")
TENANT = "ob1"
TO = "15550001111"  # a made-up number
# Not connected until the test creates `online` in the node's fake state dir: the messages wait in the outbox.
SCRIPT = [{"hello": {}}, {"emit": {"type": "connecting"}}, {"wait_file": "online"},
          {"open": "15550002222:1@s.whatsapp.net"}, {"wait": True}]


@pytest.fixture
def two(pg_dsn, tmp_path, marker):
    daemons: dict[str, DaemonProcess] = {}
    for n in NODES:
        port = free_port()
        state = tmp_path / f"state-{n}"
        state.mkdir()
        cfg = fake_config(tmp_path / f"storage-{n}", state, f"{marker}-{n}", SCRIPT, port=port, secret=SECRET,
                          cluster={"backend": "postgres", "dsn": pg_dsn, "node_id": n,
                                   "advertise_url": f"http://127.0.0.1:{port}", "ping_interval": 0.5,
                                   "fence_after": 4, "release_after": 10, "claim_interval": 0.3})
        daemons[n] = DaemonProcess(tmp_path / f"node-{n}", cfg).start(timeout=60)
    try:
        yield daemons
    finally:
        for d in daemons.values():
            d.stop()
        for n in NODES:
            kill_marked(f"{marker}-{n}")


def sends(tmp_path: Path, node: str) -> list[dict]:
    path = tmp_path / f"state-{node}" / "sends.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def status_of(d: DaemonProcess, mid: str) -> dict:
    code, body = http_json("GET", d.url + f"/whatsapp/{TENANT}/messages/{mid}", headers=H)
    assert code == 200, body
    return body


def test_queued_messages_are_sent_once_by_the_new_owner_after_a_sigkill(two, pg_dsn, tmp_path, marker):
    assert http_json("POST", two["a"].url + f"/whatsapp/{TENANT}/start", headers=H)[0] == 200
    owner = wait_for(lambda: settled(marker, [TENANT], pg_dsn, NODES), 60, "the tenant running on its owner")[TENANT]
    other = "b" if owner == "a" else "a"
    keys = [f"k{i}" for i in range(6)]
    mids = []
    for i, k in enumerate(keys):  # through both nodes: the non-owner forwards, or queues itself
        code, body = http_json("POST", two[NODES[i % 2]].url + f"/whatsapp/{TENANT}/messages",
                               {"to": TO, "text": f"m{i}"}, headers={**H, "Idempotency-Key": k})
        assert code == 202 and body["status"] == "queued", body
        assert (body["messageId"], body["waMessageId"]) == derive_ids(TENANT, k)
        mids.append(body["messageId"])
    for n in NODES:  # any node answers
        assert [status_of(two[n], m)["status"] for m in mids] == ["queued"] * len(mids)
    assert sends(tmp_path, owner) == []  # its worker is not connected: nothing left

    (tmp_path / f"state-{other}" / "online").touch()  # the next owner's worker connects at once
    two[owner].kill9()
    wait_for(lambda: (lambda w: w if w and w[TENANT] == other else None)(settled(marker, [TENANT], pg_dsn, NODES)),
             60, "the tenant taken over by the other node")
    wait_for(lambda: all(status_of(two[other], m)["status"] == "sent" for m in mids), 60, "every message sent")
    assert not live_workers(f"{marker}-{owner}")
    with psycopg.connect(pg_dsn) as c:  # one outbox connection per node, whatever the tenant or message count
        assert c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                         (f"bsup:{other}:outbox",)).fetchone()[0] == 1

    # the killed node back: it answers too (from the shared outbox, or forwarded to the owner), and resends nothing
    two[owner].start(timeout=60)
    assert [status_of(two[owner], m)["status"] for m in mids] == ["sent"] * len(mids)
    got = sends(tmp_path, other) + sends(tmp_path, owner)
    assert Counter(s["waId"] for s in got) == Counter(derive_ids(TENANT, k)[1] for k in keys), got  # once each
    assert [s["text"] for s in got] == [f"m{i}" for i in range(len(keys))]  # in order
