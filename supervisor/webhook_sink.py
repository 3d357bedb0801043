"""How the daemon feeds the webhook forwarder (supervisor/webhook.py): the forwarder built from the config, with
its metrics hooks, and the synchronous message hook a Tenant calls for every `message` event."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from .settings import WebhookSettings

if TYPE_CHECKING:
    from .metrics import Metrics
    from .webhook import WebhookForwarder

log = structlog.get_logger("supervisor.daemon")


def make_forwarder(settings: WebhookSettings, storage_root: Path, metrics: Metrics) -> WebhookForwarder | None:
    """None when `webhook.url` is unset: no spool is opened and the aiohttp client is never imported."""
    if settings.url is None:
        return None
    from .webhook import WebhookForwarder

    return WebhookForwarder(settings, storage_root=storage_root, on_depth=metrics.webhook_depth,
                            on_result=metrics.webhook_result)


class MessageSink:
    """Tenant.on_message is synchronous; spooling is not. One task per message, created in arrival order: each runs
    submit() up to its spool write before yielding, so the spool order is the arrival order."""

    def __init__(self, forwarder: WebhookForwarder) -> None:
        self.forwarder = forwarder
        self.pending: set[asyncio.Task[None]] = set()

    def __call__(self, tid: str, payload: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._submit(tid, payload))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _submit(self, tid: str, payload: dict[str, Any]) -> None:
        from .spool import SpoolFull

        try:
            # docs/webhook.md's payload is the whole event, type included (Event.fields leaves `type` out)
            await self.forwarder.submit(tid, {"type": "message", **payload})
        except SpoolFull:
            pass  # already logged (webhook.spool_full) and counted by the forwarder
        except Exception as exc:  # noqa: BLE001 - e.g. WebhookClosed during shutdown, a disk error
            log.error("webhook.submit_failed", tenant=tid, error=type(exc).__name__, message=str(exc)[:300])

    async def drain(self) -> None:
        """Wait for every submit in flight: called after the workers stopped, before the forwarder closes."""
        while self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)
