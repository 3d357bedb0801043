"""Cluster mode: the tenant's auth state (creds.json, Signal keys; the decrypt journal and the sent store as
`journal/` and `sent/` keys, cluster_journal.py) in the fenced store (docs/cluster.md "Tenant
state"). Imported only by cluster_node.py, so the single-host mode never loads it.

- **Writes go through the daemon** (connections stay constant per node): the worker writes its local auth dir as a
  write-through cache and sends each durable write/remove as a `state` event; `on_event` queues it per tenant and one
  task per tenant commits everything queued in ONE fenced transaction (`write_kv`) at the epoch the worker was spawned
  at, then answers `state_ack`. Fenced -> the worker is SIGKILLed at once and the tenant leaves `owned` (the fenced
  gate then keeps it from respawning until a claim gives it back).
- **Materialize before spawn** (`before_spawn`): the auth dir is rebuilt from the store (a fenced read): files
  written atomically, 0600, the stock names; local files that differ or are not in the store are moved aside to
  `auth.aside-<UTC>/` next to it, never deleted. No rows but a local creds.json (first claim after an upgrade from the
  single host): the local files are imported instead.
- **Reconcile at the worker's end** (`after_exit`): creds.json is written before the pair-success reply, before the
  daemon can commit it; if the worker died before its `state` event arrived, the local file differs from the store
  and is written then (still owner at that epoch), so a SIGKILLed worker loses no finished pairing.
- **Logout** (`on_archived`): the local auth was moved aside (storage.archive_auth); the store's rows are cleared in
  the tenant's queue, so the next start shows a QR instead of logging in with the unlinked creds.

The local files need no fsync here: they are rebuilt from the store before every spawn, and only atomicity matters
(a worker never reads a torn file)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import cluster_journal
from .cluster.store import Fenced, clear_kv, get_kv, put_kv
from .cluster_journal import JOURNAL, SENT
from .events import get_logger
from .protocol import Event

log = get_logger()

CREDS = "creds.json"
_CLEAR = object()  # queue marker: drop the tenant's rows (logout)


def valid_name(name: Any) -> bool:
    """A file name of the stock multi-file layout (fixFileName: no '/'); never a hidden or temp file."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and name.endswith(".json") and "/" not in name
            and "\x00" not in name and not name.startswith("."))


def valid_key(name: Any) -> bool:
    """A store key a worker may write: a stock-layout file, or one under `journal/` or `sent/` (cluster_journal.py)."""
    if isinstance(name, str) and name.startswith((JOURNAL, SENT)):
        name = name.split("/", 1)[1]
    return valid_name(name)


def read_local(auth_dir: Path) -> dict[str, bytes]:
    """The stock-layout files of an auth dir (top level only: journal/ and sent/ are cluster_journal.py's)."""
    if not auth_dir.is_dir():
        return {}
    with os.scandir(auth_dir) as it:
        return {e.name: Path(e.path).read_bytes() for e in it
                if e.is_file(follow_symlinks=False) and valid_name(e.name)}


def write_dir(auth_dir: Path, rows: dict[str, bytes]) -> tuple[int, int]:
    """Make the stock-layout files of `auth_dir` equal to `rows`: changed files written atomically (0600); files that
    differ or are not in `rows` moved aside first. Returns (written, moved aside)."""
    auth_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    local = read_local(auth_dir)
    aside: Path | None = None
    written = moved = 0
    for name, data in local.items():
        if rows.get(name) == data:
            continue
        if aside is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            aside = auth_dir.parent / f"auth.aside-{stamp}"
            aside.mkdir(mode=0o700)
        os.replace(auth_dir / name, aside / name)
        moved += 1
    for name, data in rows.items():
        if local.get(name) == data:
            continue
        tmp = auth_dir / f".{name}.tmp-{os.getpid()}-0"  # the worker's temp-file pattern: removed at its next open
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, auth_dir / name)
        written += 1
    return written, moved


class StateStore:
    def __init__(self, own: Any) -> None:
        self.own = own
        self.epochs: dict[str, int] = {}  # tenant -> the epoch its current worker was spawned at
        self._queues: dict[str, list[tuple[Any, Any, Any]]] = {}  # tenant -> [(worker, ref, items | _CLEAR)]
        self._since: dict[str, float] = {}  # tenant -> when its oldest queued entry arrived (the worker's wait)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.stats = {"state_events": 0, "state_fenced": 0, "state_failed": 0, "materialized": 0, "imported": 0,
                      "reconciled": 0}

    # -- before a spawn ------------------------------------------------------------------------------------------
    async def before_spawn(self, tid: str, auth_dir: Path) -> None:
        """Rebuild `auth_dir` from the store at our current epoch (or import a single-host dir into an empty store).
        Any failure is an OSError: the tenant backs off like on a storage error, and its gate is re-checked."""
        await self._drain(tid)
        epoch = self.own.owned.get(tid)
        try:
            if epoch is None:
                raise Fenced(tid)
            t0 = time.perf_counter()
            async with self.own.fenced(tid, epoch) as cur:
                rows = await get_kv(cur, tid)
            stored = bool(rows)  # before the prune: a store left with nothing else is still no import
            # sent rows past KEEP_MS are deleted (fenced) instead of written as files the worker deletes again. Parsed
            # after the read: the fenced transaction holds the node's data connection, every tenant's commits wait.
            # No worker runs for the tenant meanwhile, so nothing writes those rows between the two transactions.
            expired, ats = await asyncio.to_thread(cluster_journal.expired_sent, rows, time.time() * 1000)
            if expired:
                async with self.own.fenced(tid, epoch) as cur:
                    await put_kv(cur, tid, epoch, dict.fromkeys(expired))
            for k in expired:
                del rows[k]
            if stored:
                top = {k: v for k, v in rows.items() if "/" not in k}
                written, moved = await asyncio.to_thread(write_dir, auth_dir, top)
                sub = await asyncio.to_thread(cluster_journal.materialize, auth_dir, rows, ats)
                self.stats["materialized"] += 1
                log.info("cluster.state_materialized", tenant=tid, epoch=epoch, files=len(top), written=written,
                         moved_aside=moved, **sub, sent_pruned=len(expired),
                         ms=round((time.perf_counter() - t0) * 1000))
            else:
                local = await asyncio.to_thread(read_local, auth_dir)
                if CREDS in local:  # first claim after the single host: the store starts from this host's files
                    # (and its unacked journal entries and sent store: the store is their truth from now on)
                    local.update(await asyncio.to_thread(cluster_journal.import_rows, auth_dir))
                    await self.own.write_kv(tid, dict(local), epoch)
                    self.stats["imported"] += 1
                    log.warning("cluster.state_imported", tenant=tid, epoch=epoch, files=len(local))
        except Fenced:
            self._lost(tid, epoch)
            raise OSError(f"tenant {tid}: not the owner at epoch {epoch} (fenced)") from None
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - the store is away (psycopg's errors): back off and retry
            raise OSError(f"tenant {tid}: state store: {type(exc).__name__}") from None
        self.epochs[tid] = epoch

    # -- worker events -------------------------------------------------------------------------------------------
    def on_event(self, tid: str, worker: Any, event: Event) -> None:
        """A `state` event: queue it; the tenant's drain task commits and acks (in arrival order)."""
        self._enqueue(tid, (worker, event.get("ref"), event.get("items")))

    def on_archived(self, tid: str) -> None:
        """The tenant logged out and its local auth was moved aside: clear the store too (queued, in order)."""
        self._enqueue(tid, (None, None, _CLEAR))

    def _enqueue(self, tid: str, entry: tuple[Any, Any, Any]) -> None:
        self._queues.setdefault(tid, []).append(entry)
        self._since.setdefault(tid, time.perf_counter())
        task = self._tasks.get(tid)
        if task is None or task.done():
            self._tasks[tid] = asyncio.get_running_loop().create_task(self._run(tid), name=f"state:{tid}")

    async def _drain(self, tid: str) -> None:
        task = self._tasks.get(tid)
        if task is not None and not task.done():
            await asyncio.shield(task)

    async def _run(self, tid: str) -> None:
        while batch := self._queues.pop(tid, None):
            await self._commit(tid, batch, self._since.pop(tid, time.perf_counter()))

    async def _commit(self, tid: str, batch: list[tuple[Any, Any, Any]], since: float) -> None:
        """Everything queued for the tenant in one fenced transaction (coalesced: the last write of a file wins)."""
        items: dict[str, bytes | None] = {}
        clear = False
        acks: list[tuple[Any, Any, bool]] = []
        for worker, ref, raw in batch:
            if raw is _CLEAR:
                clear, items = True, {}
                continue
            decoded = _decode(raw)
            if decoded is None:  # our own worker sent garbage: a bug; it must not write, so it gets ok:false
                log.error("cluster.state_bad_event", tenant=tid)
                acks.append((worker, ref, False))
                continue
            items.update(decoded)
            acks.append((worker, ref, True))
        epoch = self.epochs.get(tid)
        self.stats["state_events"] += len(acks)
        t0 = time.perf_counter()
        try:
            if epoch is None:
                raise Fenced(tid)
            if clear:
                async with self.own.fenced(tid, epoch) as cur:
                    await clear_kv(cur, tid)
                    await put_kv(cur, tid, epoch, items)
            elif items:
                await self.own.write_kv(tid, items, epoch)
        except Fenced:
            # A fenced worker exits at once: a stale writer must not go on (regressed Signal sessions, "Bad MAC")
            self.stats["state_fenced"] += 1
            for worker, _, _ in acks:
                _kill(worker)
            self._lost(tid, epoch)
            log.warning("cluster.state_fenced", tenant=tid, epoch=epoch, workers_killed=len(acks))
            return
        except Exception as exc:  # noqa: BLE001 - store away: the writes fail, the worker exits, its restart
            # re-materializes what was committed
            self.stats["state_failed"] += 1
            log.error("cluster.state_write_failed", tenant=tid, error=type(exc).__name__)
            acks = [(w, r, False) for w, r, _ in acks]
        for worker, ref, ok in acks:
            _ack(worker, ref, ok)
        # debug: one line per transaction (bench/cluster_state.py reads it); wait = the oldest event's time to its ack
        now = time.perf_counter()
        log.debug("cluster.state_committed", tenant=tid, events=len(acks), keys=len(items),
                  tx_ms=round((now - t0) * 1000, 2), wait_ms=round((now - since) * 1000, 2))

    # -- after a worker's end ------------------------------------------------------------------------------------
    async def after_exit(self, tid: str, auth_dir: Path) -> None:
        """Commit what the worker sent, then write a local creds.json the store does not have (a worker SIGKILLed
        between its synchronous creds write and the `state` event). Never raises."""
        try:
            await self._drain(tid)
            epoch = self.epochs.get(tid)
            if epoch is None or self.own.owned.get(tid) != epoch or not self.own.fence.valid():
                return
            path = auth_dir / CREDS
            local = await asyncio.to_thread(lambda: path.read_bytes() if path.is_file() else None)
            if local is None:
                return
            async with self.own.fenced(tid, epoch) as cur:
                if (await get_kv(cur, tid, [CREDS])).get(CREDS) != local:
                    await put_kv(cur, tid, epoch, {CREDS: local})
                    self.stats["reconciled"] += 1
                    log.warning("cluster.state_reconciled", tenant=tid, epoch=epoch)
        except Exception as exc:  # noqa: BLE001 - fenced or store away: the next owner materializes what was committed
            log.warning("cluster.state_reconcile_failed", tenant=tid, error=type(exc).__name__)

    def _lost(self, tid: str, epoch: int | None) -> None:
        """Fenced: we do not own `tid` at that epoch. Close the gate now; the next claim round re-claims the row if
        it is still ours (with a bump) or leaves it to its new owner."""
        if epoch is not None and self.own.owned.get(tid) == epoch:
            self.own.owned.pop(tid, None)
        self.epochs.pop(tid, None)

    async def close(self) -> None:
        tasks = [t for t in self._tasks.values() if not t.done()]
        await asyncio.gather(*tasks, return_exceptions=True)


def _decode(raw: Any) -> dict[str, bytes | None] | None:
    if not isinstance(raw, dict):
        return None
    out: dict[str, bytes | None] = {}
    for name, value in raw.items():
        if not valid_key(name):
            return None
        if value is None:
            out[name] = None
            continue
        if not isinstance(value, str):
            return None
        try:
            out[name] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
    return out


def _kill(worker: Any) -> None:
    if worker is not None and worker.alive:
        worker._signal_group(signal.SIGKILL)


def _ack(worker: Any, ref: Any, ok: bool) -> None:
    if worker is None or not isinstance(ref, str) or not worker.alive:
        return  # gone: nothing waits for the answer (its next spawn re-materializes from the store)
    try:
        worker.notify("state_ack", ref=ref, ok=ok)
    except Exception:  # noqa: BLE001 - NotRunning, a closed pipe: same as gone
        return
