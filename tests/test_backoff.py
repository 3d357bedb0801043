"""The restart table, row by row, as pure logic (test_tenant.py wires one row per way a worker ends)."""

from __future__ import annotations

import random

import pytest

from supervisor.backoff import MAX_IMMEDIATE_RESTARTS, Action, Ending, Streak, decide, delay
from supervisor.settings import RestartSettings
from supervisor.states import TenantState as S

T0 = 1_000.0


class Policy:
    """The streak threaded through successive decisions, as Tenant does via lifecycle.Life."""

    def __init__(self, **kw) -> None:
        self.settings = RestartSettings(**{"jitter": 0.0, **kw})
        self.streak = Streak()

    def decide(self, code, state, ending, now):
        d, self.streak = decide(self.settings, self.streak, code, state, ending, now, 0.5)
        return d


def policy(**kw) -> Policy:
    return Policy(**kw)


@pytest.mark.parametrize("code,state,next_state,reason", [
    (401, S.CONNECTED, S.LOGGED_OUT, "loggedOut"),
    (440, S.CONNECTED, S.CONFLICT, "connectionReplaced"),
    (403, S.CONNECTING, S.FAILED, "forbidden"),
    (411, S.CONNECTING, S.FAILED, "multideviceMismatch"),
    (408, S.QR, S.STOPPED, "qr_timeout"),
])
def test_resting_rows(code, state, next_state, reason):
    d = policy().decide(code, state, Ending.CLOSE, T0)
    assert (d.action, d.next_state, d.reason, d.delay) == (Action.REST, next_state, reason, 0.0)


@pytest.mark.parametrize("code", [408, 428, 500, 503, 499, None])
def test_backoff_rows(code):
    p = policy()
    d = p.decide(code, S.CONNECTED, Ending.CLOSE, T0)
    assert d.action is Action.BACKOFF and d.next_state is S.BACKOFF and d.delay == 1.0 and d.attempt == 1


@pytest.mark.parametrize("ending", [Ending.CRASH, Ending.EXIT, Ending.HEARTBEAT, Ending.SPAWN])
def test_process_endings_back_off(ending):
    d = policy().decide(None, S.STARTING, ending, T0)
    assert d.action is Action.BACKOFF and d.reason == ending.value


def test_515_restarts_at_once_without_growth_then_guards_the_loop():
    p = policy()
    p.decide(500, S.CONNECTED, Ending.CLOSE, T0)  # one earlier failure
    for _ in range(MAX_IMMEDIATE_RESTARTS):
        d = p.decide(515, S.CONNECTING, Ending.CLOSE, T0)
        assert (d.action, d.delay, d.next_state, p.streak.failures) == (Action.RESTART, 0.0, S.STARTING, 1)
    d = p.decide(515, S.CONNECTING, Ending.CLOSE, T0)
    assert d.action is Action.BACKOFF and d.delay == 2.0  # a 515 storm is a failure like any other
    p.streak = p.streak.opened(T0)  # an open ends the storm: 515 restarts at once again
    assert p.decide(515, S.CONNECTING, Ending.CLOSE, T0 + 1).action is Action.RESTART


def test_growth_cap_and_stable_reset():
    p = policy()
    delays = [p.decide(None, S.STARTING, Ending.CRASH, T0).delay for _ in range(9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    p.streak = p.streak.opened(T0)
    assert p.decide(428, S.CONNECTED, Ending.CLOSE, T0 + 10).delay == 60  # not stable long enough
    p.streak = p.streak.opened(T0 + 100)
    assert p.decide(428, S.CONNECTED, Ending.CLOSE, T0 + 130).delay == 1  # open >= stable_after: reset


def test_jitter_bounds():
    s = RestartSettings(jitter=0.2)
    assert delay(3, s, 0.0) == pytest.approx(3.2)
    assert delay(3, s, 0.999999) == pytest.approx(4.8, rel=1e-5)


def test_jitter_never_exceeds_max_delay():
    """max_delay is a promise: jitter is applied before the cap (it used to reach 72 s against 60 s)."""
    s = RestartSettings(jitter=0.2)
    rng = random.Random(12)
    draws = [0.0, 0.5, 0.999999] + [rng.random() for _ in range(5000)]
    delays = [delay(attempt, s, d) for attempt in range(1, 12) for d in draws]
    assert max(delays) <= s.max_delay
    at_cap = [delay(20, s, d) for d in draws]
    assert min(at_cap) == pytest.approx(48.0) and max(at_cap) == 60.0
    assert len({round(d, 3) for d in at_cap}) > 100  # still spread at the cap: no reconnect in lockstep


def test_a_very_long_streak_stays_at_the_cap():
    # 2.0 ** 1100 overflows a float: a tenant failing for ~17 h at the cap must not crash its restart loop
    assert delay(1100, RestartSettings(jitter=0.0), 0.5) == 60.0
    p = policy()
    p.streak = Streak(failures=5000)
    assert p.decide(None, S.STARTING, Ending.CRASH, T0).delay == 60.0


def test_max_attempts_turns_into_failed():
    p = policy(max_attempts=2)
    assert p.decide(None, S.STARTING, Ending.CRASH, T0).action is Action.BACKOFF
    assert p.decide(None, S.STARTING, Ending.CRASH, T0).action is Action.BACKOFF
    d = p.decide(None, S.STARTING, Ending.CRASH, T0)
    assert (d.action, d.next_state, d.reason) == (Action.REST, S.FAILED, "max_attempts")
    p.streak = Streak()  # an explicit start
    assert p.decide(None, S.STARTING, Ending.CRASH, T0).action is Action.BACKOFF
