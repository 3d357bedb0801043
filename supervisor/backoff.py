"""The restart table (docs/design.md) and the one backoff formula, as pure functions.

`decide()` maps how a worker ended (close code, state at close, process ending) and the failure streak so far to a
Decision and the next streak; `lifecycle.on_exit()` is its one caller (it adds what outranks the table: a logout,
a fatal worker error, a storage fault). `delay()` is also the webhook's retry delay. No clock, no randomness inside:
the caller passes `now` and a uniform draw in [0, 1), so tests are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from supervisor.settings import RestartSettings
from supervisor.states import TenantState, reason_name

# Consecutive 515s without ever reaching open: past this the "restart at once" row would be a hot loop, so the
# policy falls back to backoff (a worker that keeps asking for a restart is failing, whatever it says).
MAX_IMMEDIATE_RESTARTS = 3


class Action(str, Enum):
    RESTART = "restart"  # spawn a new worker at once (delay 0)
    BACKOFF = "backoff"  # spawn a new worker after `delay` seconds
    REST = "rest"  # no new worker; the tenant rests in `next_state` until an explicit start


class Ending(str, Enum):
    CLOSE = "close"  # the worker reported `close` and exited
    CRASH = "crash"  # exited non-zero / without a close event
    EXIT = "exit"  # exited 0 without a close event
    HEARTBEAT = "heartbeat_timeout"  # killed by the daemon's watchdog
    SPAWN = "spawn_failed"  # the command could not be executed at all


@dataclass(frozen=True)
class Decision:
    action: Action
    delay: float  # seconds until the next spawn (0 for RESTART and REST)
    next_state: TenantState  # STARTING, BACKOFF or a resting state
    reason: str  # stable tag, e.g. "restartRequired", "crash", "qr_timeout", "max_attempts"
    attempt: int  # consecutive failures so far (after this one)


@dataclass(frozen=True)
class Streak:
    """What the policy remembers between decisions. An explicit start begins with `Streak()`."""
    failures: int = 0  # consecutive failures since the last stable open
    immediate: int = 0  # consecutive 515s since the last open
    opened_at: float | None = None  # when the current worker's connection opened

    def opened(self, now: float) -> Streak:
        return Streak(self.failures, 0, now)


class BackoffShape(Protocol):
    """RestartSettings and the webhook's settings both have these."""
    initial_delay: float
    multiplier: float
    max_delay: float
    jitter: float


def delay(attempt: int, s: BackoffShape, draw: float) -> float:
    """Delay after the `attempt`-th consecutive failure (1-based): initial * multiplier^(attempt-1), +- jitter
    around it (`draw` uniform in [0, 1)), then capped at max_delay. The cap comes last because it is a promise
    (docs, the operator's config): jitter applied after it let delays reach 72 s against a 60 s max_delay. At the
    cap, delays spread over [max_delay * (1 - jitter), max_delay], so many tenants still do not retry in lockstep."""
    try:
        base = min(s.max_delay, s.initial_delay * s.multiplier ** max(0, attempt - 1))
    except OverflowError:  # a streak of ~1000 failures (17 h at the cap) must not crash the tenant
        base = s.max_delay
    return min(s.max_delay, max(0.0, base * (1.0 + s.jitter * (2.0 * draw - 1.0))))


def decide(s: RestartSettings, streak: Streak, code: int | None, state: TenantState, ending: Ending, now: float,
           draw: float) -> tuple[Decision, Streak]:
    """The restart table. `state` is the tenant's state when the socket closed (QR matters for 408)."""
    failures, immediate = streak.failures, streak.immediate
    if streak.opened_at is not None and now - streak.opened_at >= s.stable_after:
        failures = 0  # the connection was stable: this is a fresh problem, not a continuing one
    name = reason_name(code) or (str(code) if code is not None else ending.value)

    def rest(next_state: TenantState, reason: str) -> tuple[Decision, Streak]:
        return Decision(Action.REST, 0.0, next_state, reason, failures), Streak(failures, immediate)

    if ending is Ending.CLOSE:
        if code == 515 and immediate < MAX_IMMEDIATE_RESTARTS:
            return Decision(Action.RESTART, 0.0, TenantState.STARTING, name, failures), Streak(failures, immediate + 1)
        if code == 401:
            return rest(TenantState.LOGGED_OUT, name)
        if code == 440:
            return rest(TenantState.CONFLICT, name)
        if code in (403, 411):
            return rest(TenantState.FAILED, name)
        if code == 408 and state is TenantState.QR:
            return rest(TenantState.STOPPED, "qr_timeout")
    # Everything else (408/428/500/503/unknown codes, crashes, exits without close, watchdog kills): backoff.
    failures += 1
    if s.max_attempts is not None and failures > s.max_attempts:
        return rest(TenantState.FAILED, "max_attempts")
    return Decision(Action.BACKOFF, delay(failures, s, draw), TenantState.BACKOFF, name, failures), \
        Streak(failures, immediate)
