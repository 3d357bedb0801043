"""Ownership metrics for `GET /metrics`: a collector read at scrape time from `own.health()`, so the ownership code
keeps plain counters and never imports prometheus_client. The daemon registers it on its own registry:
`registry.register(OwnershipCollector(own))` (supervisor/metrics.py's `Metrics.registry`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

PREFIX = "baileys_supervisor_cluster"


class OwnershipCollector:
    def __init__(self, own: Any) -> None:
        self.own = own

    def collect(self) -> Iterator[Any]:
        h = self.own.health()
        yield GaugeMetricFamily(f"{PREFIX}_owned_tenants", "Tenants this node owns.", value=h.get("owned", 0))
        yield GaugeMetricFamily(f"{PREFIX}_fenced", "1 while this node's lease has lapsed (workers killed, no "
                                "claims).", value=1 if h.get("fenced") else 0)
        if "leaseRemaining" in h:
            yield GaugeMetricFamily(f"{PREFIX}_lease_remaining_seconds", "Seconds until this node fences itself "
                                    "unless a ping succeeds.", value=h["leaseRemaining"])
        for key, name, text in (("epoch_bumps", "epoch_bumps", "Tenants claimed by this node (each bumps the epoch)."),
                                ("fence_events", "fence_events", "Times this node fenced itself."),
                                ("lost", "tenants_lost", "Tenants found taken over by another node."),
                                ("handoffs", "handoffs", "Tenants handed to a joining node.")):
            if key in h:
                yield CounterMetricFamily(f"{PREFIX}_{name}", text, value=h[key])
        if "writes" in h:
            yield SummaryMetricFamily(f"{PREFIX}_store_write_seconds", "Fenced state writes (one transaction each).",
                                      count_value=h["writes"], sum_value=h["write_seconds"])
