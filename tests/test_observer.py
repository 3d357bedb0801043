"""The one observer interface: fan-out in order, and an observer that raises never breaks a transition (unit, then
with the real fake worker through a Supervisor)."""

from __future__ import annotations

from structlog.testing import capture_logs

from conftest import FakeClock, wait_until
from supervisor.daemon import Supervisor
from supervisor.observer import Observers, TenantObserver
from supervisor.states import TenantState as S


class Recorder(TenantObserver):
    def __init__(self, calls: list, name: str) -> None:
        self.calls, self.name = calls, name

    def on_state(self, tenant, old, new, reason):
        self.calls.append((self.name, tenant, old, new, reason))

    def on_qr(self, tenant, qr):
        self.calls.append((self.name, "qr", tenant, qr))


class Broken(TenantObserver):
    def _bug(self, *args):
        raise RuntimeError("observer bug")

    on_state = on_qr = on_open = on_message = _bug  # type: ignore[assignment]


def test_fan_out_in_order_and_a_raising_observer_is_logged_and_skipped():
    calls: list = []
    obs = Observers(Recorder(calls, "a"), Broken(), Recorder(calls, "b"))
    with capture_logs() as logs:
        obs.on_state("t", S.STOPPED, S.STARTING, "start")
        obs.on_qr("t", "2@x")
        obs.on_rss("t", 1)  # the no-op base: nobody implements it, nothing happens
    assert calls == [("a", "t", S.STOPPED, S.STARTING, "start"), ("b", "t", S.STOPPED, S.STARTING, "start"),
                     ("a", "qr", "t", "2@x"), ("b", "qr", "t", "2@x")]
    failed = [e for e in logs if e["event"] == "tenant.observer_failed"]
    assert [(e["observer"], e["hook"], e["error"]) for e in failed] == [("Broken", "on_state", "RuntimeError"),
                                                                         ("Broken", "on_qr", "RuntimeError")]
    assert "2@x" not in repr(logs)  # a QR is a credential


async def test_a_raising_observer_never_breaks_a_tenants_transitions(make_settings):
    script = [{"hello": {}}, {"emit": {"type": "connecting"}}, {"qr": "2@fake"},
              {"emit": {"type": "message", "upsertType": "notify", "messages": [], "ref": "r1"}},
              {"open": "1@s.whatsapp.net"}, {"wait": True}]
    clock = FakeClock()
    got: list = []
    sup = Supervisor(make_settings(script), clock=clock, sleep=clock.sleep,
                     on_message=lambda tid, payload: got.append(tid))
    calls: list = []
    sup.observers = Observers(Broken(), sup.observers, Recorder(calls, "after"))  # read at the tenant's creation
    with capture_logs() as logs:
        await sup.start_tenant("t")
        await wait_until(lambda: sup.status("t")["state"] == "connected")
    assert [c[3] for c in calls if c[0] == "after" and c[1] == "t"] == [S.STARTING, S.CONNECTING, S.QR, S.CONNECTED]
    assert got == ["t"]  # the observers after the broken one still ran (the webhook's message hook)
    assert sup.metrics.connected.labels(tenant="t")._value.get() == 1
    assert any(e["event"] == "tenant.observer_failed" and e["hook"] == "on_state" for e in logs)
    await sup.shutdown()
