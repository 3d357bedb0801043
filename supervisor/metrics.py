"""Prometheus metrics for `GET /metrics`, on a registry of their own (never prometheus_client's global REGISTRY,
so several Supervisors in one test process, or two daemons in one interpreter, never clash).

Interface (the daemon owns one `Metrics`; every method is cheap, sync and never raises on odd input). The tenant
hooks are those of `observer.TenantObserver`: the daemon adds its Metrics to the observers every Tenant reports to.

    m = Metrics(version=__version__)               # registry=None -> a fresh CollectorRegistry
    m.on_state(tenant, old, new, reason=None)      # every TenantState change (from Tenant.change_state)
    m.on_close(tenant, code)                       # a worker's `close` event (code: int | None)
    m.on_restart(tenant, reason)                   # an automatic restart, by the restart Decision.reason
                                                   # ("restartRequired", "timedOut", "crash", "heartbeat_timeout", ...):
                                                   # a small vocabulary, it is a label (the tenant is not)
    m.on_rss(tenant, rss_bytes)                    # each worker heartbeat; None clears it (worker gone)
    m.on_spawn(tenant, seconds)                    # spawn -> `hello` line of a worker
    m.on_invalid_line(tenant, n=1)                 # stdout lines that are not protocol (worker.protocol_error)
    m.webhook_depth(n)                             # spool size: WebhookForwarder(on_depth=m.webhook_depth)
    m.webhook_result(result)                       # "delivered" | "retry" | "dead_letter" | "spool_full":
                                                   # WebhookForwarder(on_result=m.webhook_result)
    m.watch_spawn_slots(slots)                     # SpawnSlots: limit / in use / waiting, read at scrape time
    m.watch_capacity(budget, known, limits)        # ProcessBudget + known-tenant count + LimitsSettings, at scrape time
    m.forget(tenant)                               # tenant removed (e.g. dropped by reload): its series go away
    body, content_type = m.render()                # bytes + the Content-Type header value to send

With aiohttp: `web.Response(body=body, headers={"Content-Type": content_type})` (not `content_type=`, which refuses a
value that carries parameters).

Label cardinality: `tenant` is the only unbounded label. Series with it exist only for tenants the daemon knows,
and `forget()` removes them. Close codes are bounded by Baileys' small code set (an unnamed code is still its own
value, but the worker can only report what the server sends).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from . import PROTOCOL_VERSION, __version__
from .observer import TenantObserver
from .slots import SpawnSlots
from .states import RESTING_STATES, TenantState, reason_name

if TYPE_CHECKING:
    from .capacity import ProcessBudget
    from .settings import LimitsSettings

PREFIX = "baileys_supervisor"

# Spawn latency = process start + node/Baileys import, usually 0.1-2 s; the tail (slow disk, CPU starved by a boot of
# many tenants) is what the upper buckets are for.
SPAWN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

# States whose worker is gone: its last RSS would be a lie.
_NO_WORKER = frozenset(s.value for s in RESTING_STATES | {TenantState.BACKOFF})


class LatestValueGauge:
    """A gauge with one label whose values are a plain dict, turned into samples only when scraped.

    For values that change far more often than they are read: every worker heartbeat carries its RSS (200 tenants:
    40 updates/s), a scrape comes every 15-60 s. A labelled `Gauge` pays `labels()` (label checks, a lock, a
    tuple key) plus a locked `set()` per update, and the idle daemon wakes up for little else, so that was a
    measurable part of its idle CPU. Here an update is one dict store. The exposition is the same as a `Gauge`'s:
    same name, help, type, and series in first-set order (a removed series re-appears at the end, as a Gauge's)."""

    def __init__(self, name: str, documentation: str, label: str, *, registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.values: dict[str, float] = {}
        registry.register(self)

    def set(self, key: str, value: int | float) -> None:
        self.values[str(key)] = float(value)  # float() as Gauge.set does: odd input raises here, not at scrape

    def remove(self, key: str) -> None:
        self.values.pop(str(key), None)

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=[self.label])

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]  # lets the registry check for name clashes without a collect()

    def collect(self) -> list[GaugeMetricFamily]:
        family = self._family()
        for key, value in self.values.items():
            family.add_metric([key], value)
        return [family]


class SpawnSlotsCollector:
    """`baileys_supervisor_spawn_slots{kind="limit|in_use|waiting"}`, read from the daemon's SpawnSlots when scraped:
    during a boot of many tenants `waiting` says how many are still queued for a spawn."""

    def __init__(self, slots: SpawnSlots, *, registry: CollectorRegistry) -> None:
        self.slots = slots
        registry.register(self)

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{PREFIX}_spawn_slots", "Worker spawn slots (worker.max_concurrent_spawns): the "
                                 "limit, how many are in use, how many spawns wait for one.", labels=["kind"])

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> list[GaugeMetricFamily]:
        family = self._family()
        for kind, value in (("limit", self.slots.limit), ("in_use", self.slots.in_use),
                            ("waiting", self.slots.waiting)):
            family.add_metric([kind], value)
        return [family]


class CapacityCollector:
    """`baileys_supervisor_capacity{kind=...}`: the limits (`max_tenants`, `max_processes`, `max_standbys`) next to
    what uses them (`tenants` known, `processes`: places held by running tenants + standbys, `standbys`), read when
    scraped, so an alert can fire before starts are refused (429/503)."""

    def __init__(self, budget: ProcessBudget, known: Callable[[], int], limits: Callable[[], LimitsSettings], *,
                 registry: CollectorRegistry) -> None:
        self.budget, self.known, self.limits = budget, known, limits
        registry.register(self)

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{PREFIX}_capacity", "Capacity limits (limits.*) and their use: known tenants, live "
                                 "worker processes (running tenants + standbys), standbys.", labels=["kind"])

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> list[GaugeMetricFamily]:
        family, lim = self._family(), self.limits()
        for kind, value in (("max_tenants", lim.max_tenants), ("tenants", self.known()),
                            ("max_processes", lim.max_processes), ("processes", self.budget.in_use),
                            ("max_standbys", lim.max_standbys), ("standbys", self.budget.standbys)):
            family.add_metric([kind], value)
        return [family]


def _state_value(state: TenantState | str | None) -> str | None:
    if state is None:
        return None
    return state.value if isinstance(state, TenantState) else str(state)


class Metrics(TenantObserver):
    def __init__(
        self,
        version: str = __version__,
        *,
        registry: CollectorRegistry | None = None,
        process_metrics: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        if process_metrics:
            # The daemon's own CPU/RSS/fds (process_*): a leak of fds or memory in the daemon shows up here.
            ProcessCollector(registry=r)
        self.build_info = Info(f"{PREFIX}_build", "Version of the daemon and of the worker protocol.", registry=r)
        self.build_info.info(
            {"version": version, "protocol": str(PROTOCOL_VERSION), "python": platform.python_version()}
        )
        self.tenants = Gauge(f"{PREFIX}_tenants", "Known tenants by state.", ["state"], registry=r)
        self.connected = Gauge(
            f"{PREFIX}_tenant_connected", "1 while the tenant's WhatsApp connection is open, else 0.", ["tenant"],
            registry=r,
        )
        self.closes = Counter(
            f"{PREFIX}_worker_closes", "Socket closes reported by workers, by Baileys close code.", ["code", "reason"],
            registry=r,
        )
        self.restarts = Counter(f"{PREFIX}_restarts", "Worker restarts by reason.", ["reason"], registry=r)
        # Set on every heartbeat: a dict behind a scrape-time collector, not a labelled Gauge (see LatestValueGauge).
        self.rss = LatestValueGauge(
            f"{PREFIX}_worker_rss_bytes", "Resident memory of the tenant's worker (last heartbeat).", "tenant",
            registry=r,
        )
        self.spawn_seconds = Histogram(
            f"{PREFIX}_worker_spawn_seconds", "Time from spawning a worker to its hello line.",
            buckets=SPAWN_BUCKETS, registry=r,
        )
        self.invalid_lines = Counter(
            f"{PREFIX}_worker_invalid_lines", "Worker stdout lines that were not valid protocol.", ["tenant"],
            registry=r,
        )
        self.webhook_queue = Gauge(f"{PREFIX}_webhook_queue_depth", "Messages waiting in the webhook spool.", registry=r)
        self.webhook_deliveries = Counter(
            f"{PREFIX}_webhook_deliveries", "Webhook delivery attempts by result.", ["result"], registry=r
        )
        self._states: dict[str, str] = {}  # tenant -> state value: the one record the state gauge is computed from
        # Every state is exported, 0 included, so `baileys_supervisor_tenants{state="failed"} > 0` alerts work
        # from the first scrape instead of seeing an absent series.
        for state in TenantState:
            self.tenants.labels(state=state.value).set(0)

    # --- tenants -------------------------------------------------------------------------------------------------
    def on_state(self, tenant: str, old: TenantState | str | None, new: TenantState | str,
                 reason: str | None = None) -> None:
        """Record a state change. `old` and `reason` are part of the observer interface; the gauge is recomputed
        from this object's own record, so a missed or duplicated call cannot make the counts drift."""
        del old, reason
        value = _state_value(new)
        assert value is not None
        self._states[tenant] = value
        self._recount()
        self.connected.labels(tenant=tenant).set(1 if value == TenantState.CONNECTED.value else 0)
        if value in _NO_WORKER:
            self.rss.remove(tenant)

    def forget(self, tenant: str) -> None:
        """Drop every series labelled with this tenant (it was removed, e.g. by a reload)."""
        self._states.pop(tenant, None)
        self._recount()
        self.rss.remove(tenant)
        for metric in (self.connected, self.invalid_lines):
            self._remove(metric, tenant)

    def on_close(self, tenant: str, code: int | None) -> None:
        del tenant  # closes are counted per code, not per tenant: the tenant is in the `worker.close` log event
        self.closes.labels(code="none" if code is None else str(code), reason=reason_name(code) or "unknown").inc()

    def on_restart(self, tenant: str, reason: str) -> None:
        del tenant  # restarts are counted per reason; the tenant is in the `tenant.decision` log event
        self.restarts.labels(reason=reason).inc()

    def on_rss(self, tenant: str, rss_bytes: int | float | None) -> None:
        if rss_bytes is None:
            self.rss.remove(tenant)
        else:
            self.rss.set(tenant, rss_bytes)

    def on_spawn(self, tenant: str, seconds: float) -> None:
        del tenant  # one histogram for all tenants: spawn latency is a property of the host
        self.spawn_seconds.observe(max(0.0, seconds))

    def on_invalid_line(self, tenant: str, n: int = 1) -> None:
        self.invalid_lines.labels(tenant=tenant).inc(n)  # n: the worker reports a junk flood in batches

    def watch_spawn_slots(self, slots: SpawnSlots) -> None:
        SpawnSlotsCollector(slots, registry=self.registry)

    def watch_capacity(self, budget: ProcessBudget, known: Callable[[], int],
                       limits: Callable[[], LimitsSettings]) -> None:
        CapacityCollector(budget, known, limits, registry=self.registry)

    # --- webhook -------------------------------------------------------------------------------------------------
    def webhook_depth(self, n: int) -> None:
        self.webhook_queue.set(n)

    def webhook_result(self, result: str) -> None:
        self.webhook_deliveries.labels(result=result).inc()

    # --- exposition ----------------------------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its Content-Type (0.0.4: what every Prometheus version scrapes)."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4

    def _recount(self) -> None:
        counts: dict[str, int] = {s.value: 0 for s in TenantState}
        for value in self._states.values():
            counts[value] = counts.get(value, 0) + 1
        for value, n in counts.items():
            self.tenants.labels(state=value).set(n)

    @staticmethod
    def _remove(metric: Gauge | Counter, tenant: str) -> None:
        try:
            metric.remove(tenant)
        except KeyError:  # no series for this tenant yet
            pass
