"""Restart policy: the ONE place that maps how a worker ended to what happens next (docs/design.md table).

`RestartPolicy.decide()` is pure logic over (close code, state at close, how the process ended, now); the tenant
applies the Decision. Randomness and time are injected so tests are exact.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

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


class RestartPolicy:
    def __init__(self, settings: RestartSettings, *, rand: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self._rand = rand
        self.failures = 0  # consecutive failures since the last stable open
        self._immediate = 0  # consecutive 515s since the last open
        self._opened_at: float | None = None

    def reset(self) -> None:
        """An explicit start: the operator asked, history no longer counts."""
        self.failures = 0
        self._immediate = 0
        self._opened_at = None

    def on_open(self, now: float) -> None:
        self._opened_at = now
        self._immediate = 0

    def delay_for(self, failures: int) -> float:
        s = self.settings
        base = min(s.max_delay, s.initial_delay * s.multiplier ** max(0, failures - 1))
        # Symmetric jitter around the capped base keeps the mean rate at the cap while spreading many tenants.
        return max(0.0, base * (1.0 + s.jitter * (2.0 * self._rand() - 1.0)))

    def decide(self, code: int | None, state: TenantState, ending: Ending, now: float) -> Decision:
        """`state` is the tenant's state when the socket closed (QR matters for 408)."""
        if self._opened_at is not None and now - self._opened_at >= self.settings.stable_after:
            self.failures = 0  # the connection was stable: this is a fresh problem, not a continuing one
        self._opened_at = None
        name = reason_name(code) or (str(code) if code is not None else ending.value)
        if ending is Ending.CLOSE:
            if code == 515 and self._immediate < MAX_IMMEDIATE_RESTARTS:
                self._immediate += 1
                return Decision(Action.RESTART, 0.0, TenantState.STARTING, name, self.failures)
            if code == 401:
                return Decision(Action.REST, 0.0, TenantState.LOGGED_OUT, name, self.failures)
            if code == 440:
                return Decision(Action.REST, 0.0, TenantState.CONFLICT, name, self.failures)
            if code in (403, 411):
                return Decision(Action.REST, 0.0, TenantState.FAILED, name, self.failures)
            if code == 408 and state is TenantState.QR:
                return Decision(Action.REST, 0.0, TenantState.STOPPED, "qr_timeout", self.failures)
        # Everything else (408/428/500/503/unknown codes, crashes, exits without close, watchdog kills): backoff.
        self.failures += 1
        max_attempts = self.settings.max_attempts
        if max_attempts is not None and self.failures > max_attempts:
            return Decision(Action.REST, 0.0, TenantState.FAILED, "max_attempts", self.failures)
        return Decision(Action.BACKOFF, self.delay_for(self.failures), TenantState.BACKOFF, name, self.failures)
