"""`db import` / `db export` with a directory produced by a real pairing: a single-host daemon pairs a tenant (real
node worker, real Baileys, the WhatsApp Web simulator), stops; its auth directory goes into the store and out again
into another daemon's empty storage, byte-identical; that daemon logs the tenant in with it: no QR, no new
registration or pairing, the same device, never two live sessions for it."""

from __future__ import annotations

from tests.cluster.test_transfer import db, rows  # noqa: F401 - db is a fixture
from tests.conftest import kill_marked
from tests.e2e.e2e_harness import Daemon, Simulator, daemon_config, free_port, pair

from supervisor.cluster import transfer


def auth_bytes(auth) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in auth.iterdir()
            if p.is_file() and p.name.endswith(".json") and not p.name.startswith(".")}


def daemon(tmp_path, name: str, sim: Simulator, marker: str) -> Daemon:
    (tmp_path / name).mkdir()
    return Daemon(tmp_path / name, daemon_config(tmp_path / f"storage-{name}", free_port(), sim.ws_url,
                                                 marker=marker)).start()


def test_a_paired_tenant_moves_through_the_store(tmp_path, db, marker):  # noqa: F811 - the fixture
    sim = Simulator(log_path=tmp_path / "sim.log")
    started: list[Daemon] = []
    try:
        started.append(first := daemon(tmp_path, "a", sim, marker))
        jid = pair(first, sim, "t1")["status"]["me"]["id"]
        assert first.stop() == 0  # SIGTERM: the worker flushed its auth writes
        src = tmp_path / "storage-a" / "whatsapp" / "t1" / "auth"
        files = auth_bytes(src)
        assert len(files) > 100  # creds, ~800 pre-keys, sessions, app-state keys: a real paired directory

        [rep] = transfer.import_many(db, tmp_path / "storage-a")
        assert rep["status"] == "imported" and rep["files"] == len(files), rep
        assert rows(db, "t1") == files
        dst = tmp_path / "storage-b" / "whatsapp" / "t1" / "auth"
        transfer.export_tenant(db, "t1", dst)
        assert auth_bytes(dst) == files and {p.name for p in dst.iterdir()} == set(files)

        before = sim.counters()
        started.append(second := daemon(tmp_path, "b", sim, marker))
        second.start_tenant("t1")
        st = second.wait_connected("t1")
        assert st["me"]["id"] == jid and st["hasQR"] is False and st["auth"]["registered"] is True
        after = sim.counters()
        assert after["registrations"] == before["registrations"] and after["pairings"] == before["pairings"]
        assert after["logins"] > before["logins"] and after["conflicts"] == 0
        assert sim.state()["devices"][jid]["maxConcurrent"] == 1
        assert not [e for e in second.log_events() if e.get("event") == "tenant.qr"]
    finally:
        for d in started:
            d.stop()
        sim.stop()
        kill_marked(marker)
