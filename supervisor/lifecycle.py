"""What worker events mean for a tenant, and what follows a worker's end: pure functions, supervisord style.

    on_event(life, event, now=) -> (life', actions)                          a line of the tenant's current worker
    on_exit(life, ending, settings, now=, draw=) -> (life', Decision, actions)   the worker is gone
    after_backoff(life, decision) -> (life', actions)                            the backoff delay has passed

`Life` is what the decisions depend on (state, the close of the current worker, a fatal error, a requested logout,
the restart policy's streak). Actions are small frozen dataclasses that `Tenant` executes in order (`Enter` is a
state change through `Tenant.change_state`, the others are side effects: observers, the standby, the worker). No
processes, no asyncio, no clock, no randomness here: tests set a Life, feed an event and compare the result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from supervisor import protocol
from supervisor.backoff import Action, Decision, Ending, Streak, decide
from supervisor.settings import RestartSettings
from supervisor.states import TenantState

S = TenantState
# Fatal worker errors that no restart can cure, so the tenant rests in `failed` (reason = the code) instead of
# backing off forever: an untrusted server (it failed certificate verification: a wrong endpoint or an
# interceptor) and an unparsable creds.json (the worker refuses to overwrite it with fresh creds).
REST_ON_FATAL = frozenset({"server_verification_failed", "auth_corrupt"})


@dataclass(frozen=True)
class Close:
    code: int | None
    state: TenantState  # the tenant's state when the socket closed
    reason: str | None  # the worker's name for the code, if it sent one
    message: str


@dataclass(frozen=True)
class Life:
    state: TenantState = S.STOPPED
    close: Close | None = None  # the current worker's `close` event; cleared at each spawn
    fatal: str | None = None  # a fatal error no restart cures: the tenant rests in `failed` with this reason
    logout_requested: bool = False  # an operator's logout: the worker's end rests the tenant in `logged_out`
    streak: Streak = Streak()
    # The current worker said at hello that it answers the scan's 515 with a new socket itself (docs/protocol.md):
    # then no standby is pre-started for it. Cleared at each spawn.
    restart_in_process: bool = False


# -- actions ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Enter:
    state: TenantState
    reason: str | None = None


@dataclass(frozen=True)
class Hello:  # the worker is up: the spawn slot can go, the spawn time is measured
    fields: dict[str, Any]


@dataclass(frozen=True)
class ShowQR:
    qr: str | None


@dataclass(frozen=True)
class Opened:
    me: dict[str, Any] | None
    push_name: Any
    server_time: Any
    success_at: Any = None  # the worker's clock (ms) when it read the server's time: skew without the login's work


@dataclass(frozen=True)
class Closed:
    close: Close


@dataclass(frozen=True)
class Creds:
    registered: bool


@dataclass(frozen=True)
class Forward:  # a message or message update for the webhook: {"type": ..., **fields}
    payload: dict[str, Any]


@dataclass(frozen=True)
class MessageStatus:  # a sent message reached a new status (the outbox)
    fields: dict[str, Any]


@dataclass(frozen=True)
class Rss:
    rss: int | float


@dataclass(frozen=True)
class ProtocolMismatch:  # logged; `Life.fatal` already says what follows
    got: Any


@dataclass(frozen=True)
class WorkerError:  # logged
    fields: dict[str, Any]


@dataclass(frozen=True)
class PairingCode:  # logged (the code itself is a credential: never)
    pass


@dataclass(frozen=True)
class Prewarm:  # start the standby worker (if prewarm is on, none is up and the worker lives)
    pass


@dataclass(frozen=True)
class DismissStandby:  # ask the standby to exit, without waiting (event path)
    pass


@dataclass(frozen=True)
class ReapStandby:  # take the standby down and wait until it is gone (after a worker's end)
    pass


@dataclass(frozen=True)
class StopWorker:
    pass


@dataclass(frozen=True)
class ArchiveAuth:  # move auth aside (logged out); if refused, the tenant rests in `failed`, reason storage_error
    pass


@dataclass(frozen=True)
class Restarting:  # an automatic restart was decided (counted, observed)
    reason: str


Step = tuple[Life, tuple[Any, ...]]


def on_event(life: Life, event: protocol.Event, *, now: float) -> Step:
    t, st = event.type, life.state
    if t == "heartbeat":  # first: nearly every line an idle daemon reads
        rss = event.get("rss")
        return life, (Rss(rss),) if isinstance(rss, (int, float)) and not isinstance(rss, bool) else ()
    if t == "hello":
        if event.get("protocol") != protocol.PROTOCOL_VERSION:
            # a worker speaking another protocol: stop it, and rest in `failed` instead of restarting it
            return (dataclasses.replace(life, fatal="protocol_mismatch"),
                    (Hello(event.fields), ProtocolMismatch(event.get("protocol")), StopWorker()))
        # No standby yet: a hello says nothing about the network, and a worker that cannot connect (offline, in a
        # backoff loop) would get an idle Baileys process per cycle. The first QR proves a scan is ahead.
        if event.get("restartInProcess") is True:
            life = dataclasses.replace(life, restart_in_process=True)
        return life, (Hello(event.fields),)
    if t == "connecting" and st in (S.STARTING, S.QR, S.CONNECTED):
        return dataclasses.replace(life, state=S.CONNECTING), (Enter(S.CONNECTING),)
    if t == "qr" and st in (S.STARTING, S.CONNECTING, S.QR):
        # A worker that exits at the scan's 515 needs a new one: pre-start it now (standby.py), at the first sign that
        # a scan can come (Prewarm is a no-op while one is up, so QR refreshes cost nothing). Not for a worker that
        # reconnects in-process: there a standby would only compete for the CPU with the login (measured +0.3 s on
        # an instant scan, docs/benchmarks.md) and cost ~80 MiB per waiting tenant, for a fallback that is rare.
        prewarm = () if life.restart_in_process else (Prewarm(),)
        return (dataclasses.replace(life, state=S.QR),
                (Enter(S.QR, "waiting_for_scan"), ShowQR(event.get("qr")), *prewarm))
    if t == "open" and st in (S.STARTING, S.QR, S.CONNECTING):
        me = event.get("me")
        opened = Opened(me if isinstance(me, dict) else None, event.get("pushName"), event.get("serverTime"),
                        event.get("successAt"))
        # linked without the usual 515 restart: the standby is not needed
        return (dataclasses.replace(life, state=S.CONNECTED, streak=life.streak.opened(now)),
                (opened, Enter(S.CONNECTED), DismissStandby()))
    if t == "close":
        close = Close(event.get("code"), st, event.get("reason"), event.get("message") or "")
        if event.get("reconnecting") is True and close.code == 515:
            return _reconnecting(life, close)
        return dataclasses.replace(life, close=close), (Closed(close),)
    if t == "creds":
        return life, (Creds(bool(event.get("registered"))),)
    if t in ("message", "message_update"):
        return life, (Forward({"type": t, **event.fields}),)
    if t == "message_status":
        return life, (MessageStatus(event.fields),)
    if t == "pairing_code":
        return life, (PairingCode(),)
    if t == "error":
        if event.get("fatal") and event.get("code") in REST_ON_FATAL:
            life = dataclasses.replace(life, fatal=event.get("code"))  # retrying cannot help: rest in `failed`
        return life, (WorkerError(event.fields),)
    return life, ()


def _reconnecting(life: Life, close: Close) -> Step:
    """The scan's 515, which the worker answers with a new socket in the same process (docs/protocol.md): a
    transition, not an end. No restart (same pid, same inherited lock), no backoff, not counted in `restarts`; the
    close is reported (lastDisconnect, metrics) but not kept as the worker's end, so if this worker then exits, its
    own next close (or a crash) decides. The standby is not needed: dismissed, which also gives the login the CPU
    a standby still importing Baileys would take. Only a worker that still runs a socket moves the state: during a
    stop the close is just reported."""
    if life.state not in (S.STARTING, S.QR, S.CONNECTING, S.CONNECTED):
        return life, (Closed(close),)
    return (dataclasses.replace(life, state=S.CONNECTING),
            (Closed(close), Enter(S.CONNECTING, close.reason or "restartRequired"), DismissStandby()))


def ending(life: Life, *, heartbeat_timeout: bool, returncode: int | None) -> Ending:
    """How the current worker ended, as the restart table knows it."""
    if heartbeat_timeout:
        return Ending.HEARTBEAT  # killed by the daemon's watchdog, whatever it said before
    if life.close is not None:
        return Ending.CLOSE
    return Ending.EXIT if returncode == 0 else Ending.CRASH


def on_exit(life: Life, ending: Ending, settings: RestartSettings, *, now: float, draw: float,
            storage_error: bool = False) -> tuple[Life, Decision, tuple[Any, ...]]:
    """The one place that decides what follows a worker's end. An operator's logout and a fatal error outrank the
    restart table; a storage fault (the spawn could not even be prepared) backs off like a crash but says so.
    `draw` is a uniform [0, 1) sample for the jitter."""
    code = life.close.code if life.close is not None else None
    at_close = life.close.state if life.close is not None else life.state
    if life.logout_requested:
        decision, streak = Decision(Action.REST, 0.0, S.LOGGED_OUT, "logout", life.streak.failures), life.streak
    elif life.fatal is not None:
        decision, streak = Decision(Action.REST, 0.0, S.FAILED, life.fatal, life.streak.failures), life.streak
    else:
        decision, streak = decide(settings, life.streak, code, at_close, ending, now, draw)
    if storage_error:
        # Disk full / read-only / EIO: back off like a crash (growing delay, max_attempts -> failed) rather than
        # rest: such faults are usually fixed from outside, and then the tenant comes back by itself.
        decision = dataclasses.replace(decision, reason="storage_error")
    life = dataclasses.replace(life, streak=streak)
    if decision.action is Action.REST:
        archive = (ArchiveAuth(),) if decision.next_state is S.LOGGED_OUT else ()
        return (dataclasses.replace(life, state=decision.next_state), decision,
                (ReapStandby(), *archive, Enter(decision.next_state, decision.reason)))
    if decision.action is Action.BACKOFF:
        # the Tenant sleeps `decision.delay` in BACKOFF, then enters STARTING itself (a stop may come first)
        return (dataclasses.replace(life, state=S.BACKOFF), decision,
                (Restarting(decision.reason), Enter(S.BACKOFF, decision.reason)))
    return (dataclasses.replace(life, state=S.STARTING), decision,
            (Restarting(decision.reason), Enter(S.STARTING, decision.reason)))


# A failure streak becomes an operator's problem at its 3rd attempt (a 408 or two is WhatsApp's weather; three in a
# row, ~7 s, is a network, DNS or proxy fault): the decision is logged at warning then, and on every 10th attempt
# after, i.e. about once per 10 minutes at the 60 s cap. Not at each attempt: 250 tenants offline together would
# raise 250 warnings a minute, and the first one per streak already pages.
WARN_AT_ATTEMPT = 3
WARN_EVERY = 10


def decision_level(decision: Decision) -> str:
    """The log level of a `tenant.decision`: warning when a backoff streak reaches WARN_AT_ATTEMPT (then every
    WARN_EVERY-th attempt) and when the tenant gives up in `failed`; info otherwise."""
    if decision.action is Action.REST:
        return "warning" if decision.next_state is S.FAILED else "info"
    n = decision.attempt
    if decision.action is Action.BACKOFF and (n == WARN_AT_ATTEMPT or (n > WARN_AT_ATTEMPT and n % WARN_EVERY == 0)):
        return "warning"
    return "info"


def after_backoff(life: Life, decision: Decision) -> Step:
    """The backoff delay has passed without a stop: the next worker starts."""
    return dataclasses.replace(life, state=S.STARTING), (Enter(S.STARTING, decision.reason),)


def started(life: Life) -> Life:
    """An explicit start: the operator asked, history no longer counts."""
    return Life(state=life.state)


def spawning(life: Life) -> Life:
    """A new worker: the previous one's close and what its hello said no longer apply."""
    return dataclasses.replace(life, close=None, restart_in_process=False)
