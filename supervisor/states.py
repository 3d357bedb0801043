"""The tenant state model (supervisord style): states, the allowed transitions, Baileys' close codes, and the time
format of the status. Data the tenant, the restart policy, the metrics, doctor and docs/design.md all refer to."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
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


S = TenantState
# States in which a worker process is (or may be) alive.
ACTIVE_STATES = frozenset({S.STARTING, S.QR, S.CONNECTING, S.CONNECTED, S.STOPPING})
# States from which only an explicit start leaves: no worker, no restart scheduled, the lock not held. Every other
# state (ACTIVE_STATES and BACKOFF) is one a stop has to end.
RESTING_STATES = frozenset({S.STOPPED, S.LOGGED_OUT, S.CONFLICT, S.FAILED})

_WORKER_STATES = {S.QR, S.CONNECTING, S.CONNECTED, S.STARTING}
_ENDED = {S.BACKOFF, S.STOPPING, S.STOPPED, S.LOGGED_OUT, S.CONFLICT, S.FAILED}
# Allowed transitions for `Tenant.change_state()`. Same-state "changes" are no-ops and never validated.
TRANSITIONS: dict[TenantState, frozenset[TenantState]] = {
    S.STOPPED: frozenset({S.STARTING, S.LOGGED_OUT}),
    S.STARTING: frozenset(_WORKER_STATES | _ENDED),
    S.QR: frozenset(_WORKER_STATES | _ENDED),
    S.CONNECTING: frozenset(_WORKER_STATES | _ENDED),
    S.CONNECTED: frozenset({S.CONNECTING, S.STARTING} | _ENDED),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.LOGGED_OUT, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED, S.LOGGED_OUT, S.FAILED}),
    S.LOGGED_OUT: frozenset({S.STARTING, S.STOPPED}),
    S.CONFLICT: frozenset({S.STARTING, S.STOPPED, S.LOGGED_OUT}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED, S.LOGGED_OUT}),
}


class InvalidTransition(RuntimeError):
    """A bug: code asked for a transition the state model forbids."""


@dataclass(frozen=True)
class CloseCode:
    name: str  # Baileys' DisconnectReason name (status `lastDisconnect.reason`, the metrics' `reason` label)
    meaning: str  # for operators (doctor)
    fix: str  # what an operator does about it (doctor); the restart policy's row is in backoff.py


# Baileys' DisconnectReason (7.0.0-rc14). 408 covers both timedOut and connectionLost.
CLOSE_CODES: dict[int, CloseCode] = {
    401: CloseCode("loggedOut", "logged out: the phone removed this linked device or the session was revoked",
                   "relink: `baileys-supervisor start T` then scan the new QR; on the phone, Linked devices: remove "
                   "old entries of this service"),
    403: CloseCode("forbidden", "forbidden: WhatsApp refused this account (banned or restricted)",
                   "check the number in the WhatsApp app; the daemon cannot fix this, the tenant rests in `failed`"),
    408: CloseCode("timedOut", "connection lost / timed out (network)",
                   "nothing: backoff reconnects; if it repeats check the network"),
    411: CloseCode("multideviceMismatch", "multi-device mismatch: the saved auth does not fit the account",
                   "`baileys-supervisor logout T`, then start and scan a new QR"),
    428: CloseCode("connectionClosed", "connection closed by the server (network)", "nothing: backoff reconnects"),
    440: CloseCode("connectionReplaced", "conflict: another client uses this session (same auth directory elsewhere)",
                   "stop the other process or daemon using this auth (see the processes check), then `start T`"),
    500: CloseCode("badSession", "bad session: the server rejected the session state",
                   "backoff retries; if it repeats: logout and relink"),
    503: CloseCode("unavailableService", "WhatsApp unavailable (server side)", "nothing: backoff reconnects"),
    515: CloseCode("restartRequired", "restart required: normal right after a QR scan",
                   "nothing: the worker logs in again at once (a new socket, or a new worker)"),
}


def reason_name(code: int | None) -> str | None:
    """Baileys' name for a close code, or None for codes it does not name."""
    entry = CLOSE_CODES.get(code) if code is not None else None
    return entry.name if entry is not None else None


@functools.lru_cache(maxsize=4096)  # every GET /status formats the same few timestamps again (1.4 us each)
def iso(ts: float | None) -> str | None:
    """The API's time format (status `since`, `nextRetryAt`, `lastDisconnect.at`; token expiry): UTC, ms, `Z`."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
