"""Unit tests of the pure parts: the lease (fence.py) on a fake monotonic clock, and placement (placement.py)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from supervisor.cluster.fence import Fence, keep_alive
from supervisor.cluster.placement import NodeView, place, ranking, surplus


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lease_runs_from_the_ping_send_time_and_never_revives():
    c = Clock()
    f = Fence(4.0, clock=c)
    assert not f.valid()  # no lock yet
    f.reset(100.0)
    c.now = 103.0
    assert f.renewed(102.5) and f.valid()  # lease now ends at 106.5 (send time, not reply time)
    c.now = 106.4
    assert f.valid()
    c.now = 106.6
    assert not f.valid()  # e.g. SIGSTOPped across the deadline: the first check after SIGCONT says no
    assert not f.renewed(106.6) and not f.valid()  # a ping that gets through afterwards does not revive it
    assert f.trip() and not f.trip() and f.trips == 1  # one transition, one kill
    c.now = 107.0
    f.reset(107.0)  # only a new lock acquisition ends a fence
    assert f.valid() and 3.9 < f.valid_until() - time.time() <= 4.0


async def test_keep_alive_lapses_on_deadline_with_a_hung_ping():
    f = Fence(0.3)
    f.reset(time.monotonic())
    reasons = []

    async def hung():
        await asyncio.Event().wait()

    t0 = time.monotonic()
    await asyncio.wait_for(keep_alive(f, hung, 0.1, reasons.append), 10)
    assert reasons == ["ping_deadline"] and 0.25 < time.monotonic() - t0 < 5


async def test_keep_alive_lapses_at_once_when_the_session_is_lost():
    f = Fence(30.0)
    f.reset(time.monotonic())
    reasons = []

    async def broken():
        raise ConnectionError("server closed the connection")

    await asyncio.wait_for(keep_alive(f, broken, 0.05, reasons.append), 10)
    assert reasons == ["lock_session_lost"]


def nodes(*spec):
    return [NodeView(n, i + 1, alive, draining, cap, owned) for i, (n, alive, draining, cap, owned) in enumerate(spec)]


def test_place_spreads_respects_caps_and_skips_dead_and_draining():
    ts = [f"t{i}" for i in range(3000)]
    got = Counter(place(ts, nodes(("a", True, False, 2000, 0), ("b", True, False, 2000, 0),
                                  ("c", True, False, 2000, 0), ("d", False, False, 2000, 0),
                                  ("e", True, True, 2000, 0))).values())
    assert set(got) == {"a", "b", "c"} and all(800 < v < 1200 for v in got.values())
    capped = Counter(place(ts, nodes(("a", True, False, 100, 50), ("b", True, False, 3000, 0))).values())
    assert capped["a"] == 50 and capped["b"] == 2950
    assert place(ts[:10], nodes(("a", True, False, 5, 5))) == {}  # full: they wait


def test_ranking_is_stable_when_a_node_joins():
    ts = [f"t{i}" for i in range(1000)]
    before = {t: ranking(t, ["a", "b"])[0] for t in ts}
    after = {t: ranking(t, ["a", "b", "c"])[0] for t in ts}
    moved = [t for t in ts if before[t] != after[t]]
    assert all(after[t] == "c" for t in moved) and 200 < len(moved) < 470  # only to the newcomer, ~1/3


def test_surplus_hands_off_to_a_joined_node_in_small_batches():
    mine = [f"t{i}" for i in range(100)]
    view = nodes(("a", True, False, 250, 100), ("b", True, False, 250, 0))
    out = surplus("a", mine, view, total=100, limit=5)
    assert len(out) == 5 and all(ranking(t, ["a", "b"])[0] == "b" for t in out)
    assert surplus("a", mine[:50], view, total=100, limit=5) == []  # at its fair share: nothing
    assert surplus("a", mine, nodes(("a", True, False, 250, 100), ("b", True, True, 250, 0)), 100, 5) == []


def test_ownership_metrics_from_health():
    from prometheus_client import CollectorRegistry, generate_latest

    from supervisor.cluster import LocalOwnership
    from supervisor.cluster.metrics import OwnershipCollector

    class Own:
        def health(self):
            return {"owned": 7, "fenced": True, "leaseRemaining": 0.0, "epoch_bumps": 9, "fence_events": 2,
                    "lost": 1, "handoffs": 3, "writes": 4, "write_seconds": 0.5}

    r = CollectorRegistry()
    r.register(OwnershipCollector(Own()))
    text = generate_latest(r).decode()
    for line in ("baileys_supervisor_cluster_owned_tenants 7.0", "baileys_supervisor_cluster_fenced 1.0",
                 "baileys_supervisor_cluster_epoch_bumps_total 9.0", "baileys_supervisor_cluster_fence_events_total 2.0",
                 "baileys_supervisor_cluster_store_write_seconds_count 4.0",
                 "baileys_supervisor_cluster_store_write_seconds_sum 0.5"):
        assert line in text, text
    local = CollectorRegistry()
    local.register(OwnershipCollector(LocalOwnership()))
    assert "baileys_supervisor_cluster_fenced 0.0" in generate_latest(local).decode()
