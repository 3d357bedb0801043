"""supervisor.metrics: the exposition parses and carries the values the daemon fed in."""

from __future__ import annotations

import asyncio
import math

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from supervisor.protocol import PROTOCOL_VERSION
from supervisor.metrics import Metrics
from supervisor.states import TenantState as S

P = "baileys_supervisor"


def samples(m: Metrics) -> dict[tuple[str, frozenset], float]:
    """Parse render() the way Prometheus would: {(sample name, labels): value}."""
    body, ctype = m.render()
    assert ctype.startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(smp, name, **labels):
    return smp.get((name, frozenset(labels.items())))


def test_fresh_exposition_parses_with_build_info_and_zeroed_states():
    smp = samples(Metrics(version="9.9.9"))
    info = [labels for (name, labels) in smp if name == f"{P}_build_info"]
    assert len(info) == 1
    assert dict(info[0])["version"] == "9.9.9" and dict(info[0])["protocol"] == str(PROTOCOL_VERSION)
    for state in S:
        assert get(smp, f"{P}_tenants", state=state.value) == 0
    assert any(name.startswith("process_") for name, _ in smp)  # the daemon's own resources


def test_states_and_connected_follow_transitions():
    m = Metrics()
    m.on_state("a", None, S.STARTING)
    m.on_state("b", None, S.STARTING)
    m.on_state("a", S.STARTING, S.CONNECTING)
    m.on_state("a", S.CONNECTING, S.CONNECTED)
    m.on_state("b", S.STARTING, "qr")  # plain strings are accepted too
    smp = samples(m)
    assert get(smp, f"{P}_tenants", state="connected") == 1
    assert get(smp, f"{P}_tenants", state="qr") == 1
    assert get(smp, f"{P}_tenants", state="starting") == 0
    assert get(smp, f"{P}_tenant_connected", tenant="a") == 1
    assert get(smp, f"{P}_tenant_connected", tenant="b") == 0
    # A wrong `old` (a missed call at the site) cannot make the counts drift: they come from our own record.
    m.on_state("a", S.QR, S.BACKOFF)
    smp = samples(m)
    assert get(smp, f"{P}_tenants", state="connected") == 0
    assert get(smp, f"{P}_tenants", state="backoff") == 1
    assert get(smp, f"{P}_tenants", state="qr") == 1
    assert get(smp, f"{P}_tenant_connected", tenant="a") == 0


def test_closes_restarts_invalid_lines_and_webhook_counters():
    m = Metrics()
    m.on_close("a", 515)
    m.on_close("b", 515)
    m.on_close("a", 401)
    m.on_close("a", 999)
    m.on_close("a", None)
    m.on_restart("a", "close_515")
    m.on_restart("a", "close_515")
    m.on_restart("a", "crash")
    m.on_invalid_line("a")
    m.on_invalid_line("a")
    m.webhook_depth(7)
    m.webhook_result("delivered")
    m.webhook_result("delivered")
    m.webhook_result("retry")
    smp = samples(m)
    assert get(smp, f"{P}_worker_closes_total", code="515", reason="restartRequired") == 2
    assert get(smp, f"{P}_worker_closes_total", code="401", reason="loggedOut") == 1
    assert get(smp, f"{P}_worker_closes_total", code="999", reason="unknown") == 1
    assert get(smp, f"{P}_worker_closes_total", code="none", reason="unknown") == 1
    assert get(smp, f"{P}_restarts_total", reason="close_515") == 2
    assert get(smp, f"{P}_restarts_total", reason="crash") == 1
    assert get(smp, f"{P}_worker_invalid_lines_total", tenant="a") == 2
    assert get(smp, f"{P}_webhook_queue_depth") == 7
    assert get(smp, f"{P}_webhook_deliveries_total", result="delivered") == 2
    assert get(smp, f"{P}_webhook_deliveries_total", result="retry") == 1


def test_spawn_histogram():
    m = Metrics()
    for seconds in (0.03, 0.3, 0.3, 4.0, 100.0):
        m.on_spawn("a", seconds)
    smp = samples(m)
    h = f"{P}_worker_spawn_seconds"
    assert get(smp, f"{h}_count") == 5
    assert math.isclose(get(smp, f"{h}_sum"), 104.63)
    assert get(smp, f"{h}_bucket", le="0.05") == 1
    assert get(smp, f"{h}_bucket", le="0.5") == 3
    assert get(smp, f"{h}_bucket", le="5.0") == 4
    assert get(smp, f"{h}_bucket", le="+Inf") == 5


def test_rss_is_cleared_when_the_worker_is_gone():
    m = Metrics()
    m.on_state("a", None, S.CONNECTED)
    m.on_rss("a", 123_456_789)
    assert get(samples(m), f"{P}_worker_rss_bytes", tenant="a") == 123_456_789
    m.on_state("a", S.CONNECTED, S.BACKOFF)  # a stale RSS for a dead worker would mislead
    assert get(samples(m), f"{P}_worker_rss_bytes", tenant="a") is None
    m.on_rss("a", 5)
    m.on_rss("a", None)
    assert get(samples(m), f"{P}_worker_rss_bytes", tenant="a") is None


def test_forget_removes_every_tenant_series():
    m = Metrics()
    for t in ("a", "b"):
        m.on_state(t, None, S.CONNECTED)
        m.on_rss(t, 1000)
        m.on_invalid_line(t)
    m.forget("a")
    m.forget("never-seen")  # harmless
    smp = samples(m)
    assert not [labels for _, labels in smp if ("tenant", "a") in labels]
    assert get(smp, f"{P}_tenant_connected", tenant="b") == 1
    assert get(smp, f"{P}_tenants", state="connected") == 1


def test_registries_are_independent_and_not_global():
    a, b = Metrics(), Metrics()  # would raise "Duplicated timeseries" on a shared registry
    a.on_restart("t", "crash")
    assert get(samples(a), f"{P}_restarts_total", reason="crash") == 1
    assert get(samples(b), f"{P}_restarts_total", reason="crash") is None
    assert not any(name.startswith(P) for name in REGISTRY._names_to_collectors)


def _family_text(body: bytes, name: str) -> list[str]:
    return [line for line in body.decode().splitlines() if name in line]


def test_rss_exposition_is_what_a_labelled_gauge_renders():
    """The RSS series are a dict rendered at scrape time (idle CPU); the text must be a Gauge's, byte for byte."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    m = Metrics(process_metrics=False)
    ref_registry = CollectorRegistry()
    ref = Gauge(f"{P}_worker_rss_bytes", "Resident memory of the tenant's worker (last heartbeat).", ["tenant"],
                registry=ref_registry)
    steps = [("a", 5), ("b", 1.5), ("c", 123_456_789_012), ("a", 7), ("b", None), ("b", 2), ("d", 0), ("c", None)]
    for tenant, value in steps:
        m.on_rss(tenant, value)
        if value is None:
            ref.remove(tenant)
        else:
            ref.labels(tenant=tenant).set(value)
        name = f"{P}_worker_rss_bytes"
        assert _family_text(m.render()[0], name) == _family_text(generate_latest(ref_registry), name)
    assert get(samples(m), f"{P}_worker_rss_bytes", tenant="b") == 2


async def test_spawn_slots_are_read_at_scrape_time():
    from supervisor.slots import SpawnSlots

    slots, m = SpawnSlots(2), Metrics(process_metrics=False)
    m.watch_spawn_slots(slots)

    def kinds() -> dict[str, float]:
        fam = {f.name: f for f in text_string_to_metric_families(m.render()[0].decode())}["baileys_supervisor_spawn_slots"]
        return {s.labels["kind"]: s.value for s in fam.samples}

    assert kinds() == {"limit": 2, "in_use": 0, "waiting": 0}
    await slots.acquire()
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    assert kinds() == {"limit": 2, "in_use": 2, "waiting": 1}
    slots.limit = 3  # a reload
    await waiter
    assert kinds() == {"limit": 3, "in_use": 3, "waiting": 0}
