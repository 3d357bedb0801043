"""`DELETE /whatsapp/{t}` (forget a never-linked tenant) in cluster mode (supervisor/forget.py `forget_in_store`): two
real `baileys-supervisor run` processes with fake workers on one real PostgreSQL. The tenant's rows in the store go
with its files (state, owner row, epoch history), from the owner or from a node that never ran it; refused with a
JSON 409 while another node owns it (`owned_elsewhere`) or when the store's creds are linked (`linked`), and then
nothing is deleted."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.cluster.procs import owners
from tests.conftest import kill_marked, live_workers
from tests.support import DaemonProcess, fake_config, free_port, http_json, wait_for

SECRET = "s3cret-forget"
H = {"X-Internal-Secret": SECRET}
UNLINKED = json.dumps({"noiseKey": {}, "registered": False}).encode()
LINKED = json.dumps({"account": {"details": "x"}, "me": {"id": "15550001:1@s.whatsapp.net"}}).encode()


@pytest.fixture
def two_nodes(pg_dsn, tmp_path, marker):
    daemons: dict[str, DaemonProcess] = {}
    try:
        for n in ("a", "b"):
            port = free_port()
            state = tmp_path / f"state-{n}"
            state.mkdir()
            cfg = fake_config(tmp_path / f"storage-{n}", state, f"{marker}-{n}", port=port, secret=SECRET,
                              cluster={"backend": "postgres", "dsn": pg_dsn, "node_id": n,
                                       "advertise_url": f"http://127.0.0.1:{port}", "ping_interval": 0.5,
                                       "fence_after": 4, "release_after": 10, "claim_interval": 0.3})
            daemons[n] = DaemonProcess(tmp_path / f"node-{n}", cfg).start(timeout=60)
        yield daemons
    finally:
        for d in daemons.values():
            d.stop()
        for n in ("a", "b"):
            kill_marked(f"{marker}-{n}")


def rows(dsn: str, tid: str) -> dict[str, int]:
    with psycopg.connect(dsn) as c:
        return {t: c.execute(f"SELECT count(*) FROM {t} WHERE tenant_id = %s", (tid,)).fetchone()[0]
                for t in ("tenant_kv", "tenant_owner", "tenant_epoch")}


def put_creds(dsn: str, tid: str, data: bytes) -> None:
    """What the worker's `state` event would have committed: creds.json at the row's epoch."""
    with psycopg.connect(dsn) as c:
        c.execute("INSERT INTO tenant_kv (tenant_id, k, v, epoch) SELECT tenant_id, 'creds.json', %s, epoch "
                  "FROM tenant_owner WHERE tenant_id = %s", (data, tid))


def listed(d: DaemonProcess) -> set[str]:
    status, body = http_json("GET", d.url + "/whatsapp", headers=H)
    assert status == 200, body
    items = body["tenants"] if isinstance(body, dict) else body
    return {x["tenant"] for x in items}


def test_forget_clears_the_store_only_where_nobody_else_owns_it(two_nodes, pg_dsn, marker):
    d = two_nodes
    status, body = http_json("POST", d["a"].url + "/whatsapp/t1/start", headers=H)
    assert status == 200, body
    owner = wait_for(lambda: (lambda o: o[0] if o and live_workers(f"{marker}-{o[0]}") else None)(
        owners(pg_dsn).get("t1")), 60, "t1 running on its owner")
    other = "b" if owner == "a" else "a"
    put_creds(pg_dsn, "t1", UNLINKED)
    assert rows(pg_dsn, "t1") == {"tenant_kv": 1, "tenant_owner": 1, "tenant_epoch": 1}

    # through the node that does not own it: a clear 409, nothing deleted, the worker still runs on its owner
    status, body = http_json("DELETE", d[other].url + "/whatsapp/t1", headers=H)
    assert status == 409 and body["error"] == "owned_elsewhere" and body["owner"] == owner, body
    assert rows(pg_dsn, "t1") == {"tenant_kv": 1, "tenant_owner": 1, "tenant_epoch": 1}
    assert list(live_workers(f"{marker}-{owner}").values()) == ["t1"]

    # through the owner: worker stopped, files and every row gone; no node lists it any more
    status, body = http_json("DELETE", d[owner].url + "/whatsapp/t1", headers=H)
    assert status == 200 and body["forgotten"] is True, body
    assert rows(pg_dsn, "t1") == {"tenant_kv": 0, "tenant_owner": 0, "tenant_epoch": 0}
    assert not live_workers(f"{marker}-{owner}")
    wait_for(lambda: "t1" not in listed(d["a"]) and "t1" not in listed(d["b"]), 30, "t1 gone from both lists")

    # started and stopped (owner row released, state left): forgotten from a node that never ran it
    status, _ = http_json("POST", d["a"].url + "/whatsapp/t2/start", headers=H)
    assert status == 200
    ran_on = wait_for(lambda: (lambda o: o[0] if o else None)(owners(pg_dsn).get("t2")), 60, "t2 owned")
    never = "b" if ran_on == "a" else "a"
    put_creds(pg_dsn, "t2", UNLINKED)
    assert http_json("POST", d[ran_on].url + "/whatsapp/t2/stop", headers=H)[0] == 200
    wait_for(lambda: owners(pg_dsn).get("t2", ("x",))[0] is None, 30, "t2 released")
    status, body = http_json("DELETE", d[never].url + "/whatsapp/t2", headers=H)
    assert status == 200 and body["forgotten"] is True, body
    assert rows(pg_dsn, "t2") == {"tenant_kv": 0, "tenant_owner": 0, "tenant_epoch": 0}

    # linked creds in the store (nobody owns it): refused, kept
    status, _ = http_json("POST", d["a"].url + "/whatsapp/t3/start", headers=H)
    ran_on = wait_for(lambda: (lambda o: o[0] if o else None)(owners(pg_dsn).get("t3")), 60, "t3 owned")
    assert http_json("POST", d[ran_on].url + "/whatsapp/t3/stop", headers=H)[0] == 200
    wait_for(lambda: owners(pg_dsn).get("t3", ("x",))[0] is None, 30, "t3 released")
    put_creds(pg_dsn, "t3", LINKED)
    never = "b" if ran_on == "a" else "a"
    status, body = http_json("DELETE", d[never].url + "/whatsapp/t3", headers=H)
    assert status == 409 and body["error"] == "linked", body
    assert rows(pg_dsn, "t3")["tenant_kv"] == 1 and rows(pg_dsn, "t3")["tenant_owner"] == 1

    status, body = http_json("DELETE", d["a"].url + "/whatsapp/nobody", headers=H)
    assert status == 404 and body["error"] == "unknown_tenant", body
    # a forgotten id starts afresh: claimed at epoch 1 again (its history went with it), runs once
    status, _ = http_json("POST", d["b"].url + "/whatsapp/t1/start", headers=H)
    assert status == 200
    wait_for(lambda: (lambda o: o and o[1] == 1 and list(live_workers(f"{marker}-{o[0]}").values()).count("t1") == 1)(
        owners(pg_dsn).get("t1")), 60, "t1 running again at epoch 1")
