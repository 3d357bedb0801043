"""What a tenant reports to the rest of the daemon (metrics, the live event bus, the webhook, notify STATUS=):
one interface, `TenantObserver`, with a no-op base so each observer implements only what it uses, and `Observers`,
the fan-out a Tenant is given.

Every call is synchronous, made from the transition or worker-event path, so observers must be cheap and must not
await. An observer that raises is logged and skipped: its bug never breaks a transition or reaches the others.
"""

from __future__ import annotations

from typing import Any

import structlog

from supervisor.states import TenantState

log = structlog.get_logger("supervisor.tenant")


class TenantObserver:
    """The no-op base. `tenant` is the tenant id everywhere."""

    def on_state(self, tenant: str, old: TenantState, new: TenantState, reason: str | None) -> None:
        """Every state change, after it happened (Tenant.change_state)."""

    def on_qr(self, tenant: str, qr: str) -> None:
        """A new QR to show (a credential: never log it)."""

    def on_open(self, tenant: str, server_time: Any, received_at: float) -> None:
        """The connection opened; `server_time` is WhatsApp's clock as the worker reported it (ms, or None)."""

    def on_close(self, tenant: str, code: int | None) -> None:
        """The worker reported its socket closed."""

    def on_restart(self, tenant: str, reason: str) -> None:
        """An automatic restart (immediate or after a backoff); `reason` is the restart Decision's reason."""

    def on_message(self, tenant: str, payload: dict[str, Any]) -> None:
        """A `message` event's fields (docs/protocol.md), for the webhook."""

    def on_message_status(self, tenant: str, fields: dict[str, Any]) -> None:
        """A `message_status` event's fields (docs/protocol.md): a sent message reached a new status (the outbox)."""

    def on_rss(self, tenant: str, rss_bytes: int | float | None) -> None:
        """The worker's resident memory at each heartbeat; None once the tenant has no worker."""

    def on_spawn(self, tenant: str, seconds: float) -> None:
        """A worker said hello, `seconds` after its spawn began."""

    def on_invalid_line(self, tenant: str, n: int) -> None:
        """`n` stdout lines of the worker were not protocol."""


class Observers(TenantObserver):
    """Fan-out to every added observer, in the order added, each call guarded."""

    def __init__(self, *observers: TenantObserver) -> None:
        self._all: list[TenantObserver] = list(observers)

    def add(self, observer: TenantObserver) -> None:
        self._all.append(observer)

    def _each(self, method: str, tenant: str, *args: Any) -> None:
        for observer in self._all:
            try:
                getattr(observer, method)(tenant, *args)
            except Exception as exc:  # an observer's bug must never break a transition
                log.error("tenant.observer_failed", tenant=tenant, observer=type(observer).__name__, hook=method,
                          error=type(exc).__name__)

    def on_state(self, tenant: str, old: TenantState, new: TenantState, reason: str | None) -> None:
        self._each("on_state", tenant, old, new, reason)

    def on_qr(self, tenant: str, qr: str) -> None:
        self._each("on_qr", tenant, qr)

    def on_open(self, tenant: str, server_time: Any, received_at: float) -> None:
        self._each("on_open", tenant, server_time, received_at)

    def on_close(self, tenant: str, code: int | None) -> None:
        self._each("on_close", tenant, code)

    def on_restart(self, tenant: str, reason: str) -> None:
        self._each("on_restart", tenant, reason)

    def on_message(self, tenant: str, payload: dict[str, Any]) -> None:
        self._each("on_message", tenant, payload)

    def on_message_status(self, tenant: str, fields: dict[str, Any]) -> None:
        self._each("on_message_status", tenant, fields)

    def on_rss(self, tenant: str, rss_bytes: int | float | None) -> None:
        self._each("on_rss", tenant, rss_bytes)

    def on_spawn(self, tenant: str, seconds: float) -> None:
        self._each("on_spawn", tenant, seconds)

    def on_invalid_line(self, tenant: str, n: int) -> None:
        self._each("on_invalid_line", tenant, n)
