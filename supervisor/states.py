"""Tenant states and close-code names (the supervisord model, sized for one worker per tenant)."""

from __future__ import annotations

from enum import Enum


class TenantState(str, Enum):
    STOPPED = "stopped"  # no worker and none wanted (initial, after stop, after qr_timeout)
    STARTING = "starting"  # worker spawned, no socket event yet
    QR = "qr"  # waiting for the user to scan a QR (or type a pairing code)
    CONNECTING = "connecting"  # socket handshaking / logging in with saved creds
    CONNECTED = "connected"  # connection open
    BACKOFF = "backoff"  # worker gone, a restart is scheduled at nextRetryAt
    STOPPING = "stopping"  # stop requested, waiting for the worker to exit within the grace
    LOGGED_OUT = "logged_out"  # 401: auth archived, nothing runs until an explicit start (fresh QR)
    CONFLICT = "conflict"  # 440: another client uses this session; only an explicit start retries
    FAILED = "failed"  # 403/411, max attempts, protocol mismatch...: needs an operator


# States in which a worker process is (or may be) alive.
ACTIVE_STATES = frozenset(
    {TenantState.STARTING, TenantState.QR, TenantState.CONNECTING, TenantState.CONNECTED, TenantState.STOPPING}
)
# States from which only an explicit start leaves.
RESTING_STATES = frozenset({TenantState.STOPPED, TenantState.LOGGED_OUT, TenantState.CONFLICT, TenantState.FAILED})

# Baileys' DisconnectReason (7.0.0-rc14), code -> name. 408 covers both timedOut and connectionLost.
CLOSE_REASONS: dict[int, str] = {
    401: "loggedOut",
    403: "forbidden",
    408: "timedOut",
    411: "multideviceMismatch",
    428: "connectionClosed",
    440: "connectionReplaced",
    500: "badSession",
    503: "unavailableService",
    515: "restartRequired",
}


def reason_name(code: int | None) -> str | None:
    """Baileys' name for a close code, or None for codes it does not name."""
    return CLOSE_REASONS.get(code) if code is not None else None
