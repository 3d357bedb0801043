"""How the daemon feeds the webhook forwarder (supervisor/webhook.py): the forwarder built from the config, with
its metrics hooks, and the synchronous hook a Tenant calls for every `message`/`message_update` event, which acks
each message to its worker once it is spooled (docs/protocol.md "Incoming")."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from .settings import WebhookSettings

if TYPE_CHECKING:
    from .metrics import Metrics
    from .webhook import WebhookForwarder

log = structlog.get_logger("supervisor.daemon")


def make_forwarder(settings: WebhookSettings, storage_root: Path, metrics: Metrics,
                   cluster: Any = None) -> WebhookForwarder | None:
    """None when `webhook.url` is unset: no spool is opened and the aiohttp client is never imported. In cluster
    mode (`cluster`: the ClusterNode) the spool is PostgreSQL's (supervisor/cluster/spool.py) and only the tenants
    this node owns are delivered; the node resumes/pauses a tenant's delivery on gain/lose."""
    if settings.url is None:
        return None
    from .webhook import WebhookForwarder

    kw: dict[str, Any] = {}
    if cluster is not None:
        from .cluster.spool import PgSpool

        kw["spool"] = PgSpool(cluster.cs, cluster.epoch_now, max_items=settings.max_items, max_bytes=settings.max_bytes)
        kw["owns"] = cluster.may_spawn
        kw["owned"] = lambda: list(cluster.own.owned)  # the rescan: rows another node requeued
    fw = WebhookForwarder(settings, storage_root=storage_root, on_depth=metrics.webhook_depth,
                          on_result=metrics.webhook_result, **kw)
    if cluster is not None:
        cluster.webhook = fw
    return fw


def event_id(tenant: str, payload: dict[str, Any]) -> str:
    """The stable id of one message event (docs/webhook.md): sha256 of tenant|remoteJid|fromMe|id|variant, so a
    message re-emitted after a crash, a replay or a redelivery keeps its Idempotency-Key. variant: `content`, or
    `stub:<messageStubType>` (WhatsApp may send a stub and later the content under one id), or for a
    `message_update` `update:<hash of the update>` (each distinct change is its own event)."""
    if payload.get("type") == "message_update":
        key, update = payload.get("key") or {}, payload.get("update") or {}
        variant = "update:" + hashlib.sha256(json.dumps(update, sort_keys=True).encode()).hexdigest()[:16]
    else:
        msgs = payload.get("messages") or [{}]
        msg = msgs[0] if isinstance(msgs[0], dict) else {}
        key = msg.get("key") or {}
        stub = msg.get("messageStubType")
        variant = f"stub:{stub}" if stub else "content"
    parts = (tenant, key.get("remoteJid") or "", "1" if key.get("fromMe") else "0", key.get("id") or "", variant)
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()


ACK_CHUNK = 500  # refs per ack line: 500 x 67 bytes stays far below the 64 KiB command limit


def ack_commands(refs: list[str]) -> list[list[str]]:
    return [refs[i:i + ACK_CHUNK] for i in range(0, len(refs), ACK_CHUNK)]


class MessageSink:
    """Tenant events -> the spool, then `ack` to the worker. Tenant.on_message is synchronous; spooling is not. One
    task per event, created in arrival order: each runs submit() up to its spool write before yielding, so the spool
    order is the arrival order.

    Nothing WhatsApp already has a receipt for is refused for good: on SpoolFull the message is not acked (its
    worker keeps it in the journal), the tenant's later messages are not spooled either (order), and once the spool
    has room the worker is sent `replay` and re-emits them all in journal order."""

    ROOM_POLL = 0.5  # seconds between checks for room while a tenant is held back

    def __init__(self, forwarder: WebhookForwarder, command: Callable[..., bool]) -> None:
        self.forwarder = forwarder
        self.command = command  # command(tenant, cmd, **fields) -> sent? (Supervisor.worker_command)
        self.pending: set[asyncio.Task[None]] = set()
        self.held: dict[str, asyncio.Task[None]] = {}  # tenant -> its wait-for-room task

    def __call__(self, tid: str, payload: dict[str, Any]) -> None:
        if tid in self.held:
            return  # not acked: the worker keeps it and replays it once there is room
        task = asyncio.get_running_loop().create_task(self._submit(tid, payload))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _submit(self, tid: str, payload: dict[str, Any]) -> None:
        from .spool import SpoolFull

        eid = event_id(tid, payload)
        ref = payload.get("ref")
        body = {k: v for k, v in payload.items() if k != "ref"}  # the journal key is the worker's business
        body["eventId"] = eid
        try:
            await self.forwarder.submit(tid, body, event_id=eid)
        except SpoolFull:
            self._hold(tid)  # already logged (webhook.spool_full) and counted by the forwarder
            return
        except Exception as exc:  # noqa: BLE001 - e.g. WebhookClosed during shutdown, a disk error
            log.error("webhook.submit_failed", tenant=tid, error=type(exc).__name__, message=str(exc)[:300])
            return
        if isinstance(ref, str):
            self.command(tid, "ack", refs=[ref])

    def _hold(self, tid: str) -> None:
        if tid not in self.held:
            log.warning("webhook.tenant_held", tenant=tid)
            self.held[tid] = asyncio.get_running_loop().create_task(self._release(tid), name=f"held:{tid}")

    async def _release(self, tid: str) -> None:
        try:
            while not await self.forwarder.room():
                await asyncio.sleep(self.ROOM_POLL)
            await self.forwarder.unblock(tid)
        finally:
            self.held.pop(tid, None)
        log.info("webhook.tenant_released", tenant=tid)
        self.command(tid, "replay")  # no live worker: the next one re-emits its journal at start anyway

    async def drain(self) -> None:
        """Wait for every submit in flight: called after the workers stopped, before the forwarder closes."""
        for task in list(self.held.values()):
            task.cancel()
        while self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)
