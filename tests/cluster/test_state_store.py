"""The daemon's side of the fenced auth state (supervisor/cluster_state.py) on a real PostgreSQL with real ownership
nodes: a state write commits (acked) at the owner's epoch and commits nothing once another node bumped the epoch (the
writing worker, a real process group, is SIGKILLed, no ack, the gate closes); materialize rebuilds the auth dir from
the store (0600, stale and unknown local files moved aside, never deleted); an empty store imports a single-host dir;
the reconcile at a worker's end writes a creds.json the worker could not send."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import stat
import subprocess
from collections.abc import AsyncIterator

import psycopg

from supervisor.cluster.ownership import PgOwnership
from supervisor.cluster_state import StateStore
from supervisor.protocol import Event


class SleepWorker:
    """A real process in its own session (what the state store signals), and the acks it would read on stdin."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
        self.acks: list[dict] = []

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _signal_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def notify(self, cmd: str, **fields) -> None:
        self.acks.append({"cmd": cmd, **fields})

    def close(self) -> None:
        if self.alive:
            self.proc.kill()
        self.proc.wait(10)


def kv(dsn: str, tid: str) -> dict[str, bytes]:
    with psycopg.connect(dsn) as c:
        return {k: bytes(v) for k, v in c.execute("SELECT k, v FROM tenant_kv WHERE tenant_id = %s", (tid,))}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def owned(node: PgOwnership, tid: str, timeout: float = 30) -> int:
    for _ in range(int(timeout / 0.05)):
        if tid in node.owned:
            return node.owned[tid]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{tid} never owned by {node.node_id}")


@contextlib.asynccontextmanager
async def sole_owner(cluster_settings, tid: str = "t") -> AsyncIterator[tuple[PgOwnership, int]]:
    """Node "a" started, `tid` wanted and claimed by it: (the node, its epoch); closed on the way out."""
    a = PgOwnership(cluster_settings("a"))
    await a.start()
    try:
        await a.want(tid)
        yield a, await owned(a, tid)
    finally:
        await a.close(drain=False)


async def test_state_write_commits_at_the_epoch_and_a_fenced_one_commits_nothing_and_kills(cluster_settings, pg_dsn,
                                                                                          tmp_path):
    a, b = PgOwnership(cluster_settings("a")), PgOwnership(cluster_settings("b"))
    await a.start()
    worker = SleepWorker()
    try:
        await a.want("t")
        epoch = await owned(a, "t")
        await b.start()  # after a's claim: the bump below is b's
        store = StateStore(a)
        auth = tmp_path / "auth"
        auth.mkdir()
        (auth / "creds.json").write_bytes(b'{"me":1}')
        (auth / "pre-key-1.json").write_bytes(b'{"k":1}')
        await store.before_spawn("t", auth)  # empty store + local creds: imported (a single-host dir)
        assert kv(pg_dsn, "t") == {"creds.json": b'{"me":1}', "pre-key-1.json": b'{"k":1}'}

        store.on_event("t", worker, Event("state", {"ref": "s1", "items": {"pre-key-2.json": b64(b'{"k":2}'),
                                                                           "pre-key-1.json": None}}))
        store.on_event("t", worker, Event("state", {"ref": "s2", "items": {"session-x.json": b64(b"{}")}}))
        await store.close()  # the queue drained
        assert kv(pg_dsn, "t") == {"creds.json": b'{"me":1}', "pre-key-2.json": b'{"k":2}', "session-x.json": b"{}"}
        assert worker.acks == [{"cmd": "state_ack", "ref": "s1", "ok": True}, {"cmd": "state_ack", "ref": "s2",
                                                                                "ok": True}]
        assert a.stats["writes"] >= 2 and a.stats["write_seconds"] > 0  # the store write latency metric

        # another node bumps the epoch (its claim), while a still believes it owns t
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            c.execute("UPDATE tenant_owner SET owner = 'b', epoch = epoch + 1 WHERE tenant_id = 't'")
        assert a.owned.get("t") == epoch
        before = kv(pg_dsn, "t")
        store.on_event("t", worker, Event("state", {"ref": "s3", "items": {"pre-key-3.json": b64(b'{"k":3}')}}))
        await store.close()
        assert kv(pg_dsn, "t") == before  # nothing committed outside the epoch
        assert worker.proc.wait(10) == -signal.SIGKILL  # the fenced worker was killed at once
        assert [x["ref"] for x in worker.acks] == ["s1", "s2"]  # and never told its write succeeded
        assert "t" not in a.owned and store.stats["state_fenced"] == 1  # the gate is closed
    finally:
        worker.close()
        await a.close(drain=False)
        await b.close(drain=False)


async def test_materialize_moves_local_files_aside_and_reconcile_writes_unsent_creds(cluster_settings, pg_dsn,
                                                                                    tmp_path):
    async with sole_owner(cluster_settings) as (a, epoch):
        await a.write_kv("t", {"creds.json": b'{"v":"store"}', "pre-key-1.json": b"{}", "session-y.json": b"[]"})
        auth = tmp_path / "t" / "auth"
        auth.mkdir(parents=True)
        (auth / "creds.json").write_bytes(b'{"v":"stale"}')  # this host's older copy
        (auth / "pre-key-9.json").write_bytes(b"{}")  # not in the store
        (auth / "pre-key-1.json").write_bytes(b"{}")  # the same: left alone
        (auth / "journal").mkdir()  # per host (not materialized)
        store = StateStore(a)
        await store.before_spawn("t", auth)
        assert sorted(p.name for p in auth.iterdir()) == ["creds.json", "journal", "pre-key-1.json", "session-y.json"]
        assert (auth / "creds.json").read_bytes() == b'{"v":"store"}'
        assert stat.S_IMODE((auth / "session-y.json").stat().st_mode) == 0o600
        aside = [p for p in auth.parent.iterdir() if p.name.startswith("auth.aside-")]
        assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["creds.json", "pre-key-9.json"]
        assert (aside[0] / "creds.json").read_bytes() == b'{"v":"stale"}'  # never deleted
        assert store.epochs["t"] == epoch

        # the worker wrote creds.json (pair-success) and was killed before its state event: the end reconciles
        (auth / "creds.json").write_bytes(b'{"v":"linked"}')
        await store.after_exit("t", auth)
        assert kv(pg_dsn, "t")["creds.json"] == b'{"v":"linked"}'
        # a logout clears the store (the local auth was archived): the next start shows a QR
        store.on_archived("t")
        await store.close()
        assert kv(pg_dsn, "t") == {}


def test_state_sync_is_set_in_cluster_mode_only(tmp_path):
    import pytest

    from supervisor.config import settings_from_dict
    from supervisor.errors import ConfigError
    from supervisor.worker_io import worker_env

    single = settings_from_dict({"worker": {"env": {"BSUP_STATE_SYNC": "1"}}}, tmp_path / "c.yaml")
    assert single.worker.state_sync is False
    # not even through worker.env: without a cluster nobody would answer the worker's writes
    assert "BSUP_STATE_SYNC" not in worker_env(single.worker, "t", tmp_path, 3)
    cluster = settings_from_dict({"cluster": {"backend": "postgres", "dsn": "postgresql://x/y"}}, tmp_path / "c.yaml")
    assert worker_env(cluster.worker, "t", tmp_path, 3)["BSUP_STATE_SYNC"] == "1"
    with pytest.raises(ConfigError):  # not a config key
        settings_from_dict({"worker": {"state_sync": True}}, tmp_path / "c.yaml")
