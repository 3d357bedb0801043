"""The tenant state model: which transitions `Tenant.change_state()` allows (supervisord style), and the ISO time
format of the status. Split out of tenant.py: the table is data the tests and docs/design.md refer to."""

from __future__ import annotations

from datetime import UTC, datetime

from supervisor.states import TenantState

S = TenantState
_WORKER_STATES = {S.QR, S.CONNECTING, S.CONNECTED, S.STARTING}
_ENDED = {S.BACKOFF, S.STOPPING, S.STOPPED, S.LOGGED_OUT, S.CONFLICT, S.FAILED}
# Allowed transitions (supervisord style). Same-state "changes" are no-ops and never validated.
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


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
