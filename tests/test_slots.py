"""SpawnSlots (supervisor/slots.py): a semaphore for worker spawns whose size a reload can change."""

from __future__ import annotations

import asyncio

import pytest

from supervisor.config import settings_from_dict
from supervisor.daemon import Supervisor
from supervisor.reload import apply_reload
from supervisor.slots import SpawnSlots


async def queued(slots: SpawnSlots, n: int, order: list[int]) -> list[asyncio.Task[None]]:
    async def one(i: int) -> None:
        await slots.acquire()
        order.append(i)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0)
    return tasks


async def test_a_larger_limit_admits_waiters_at_once_in_arrival_order():
    slots, order = SpawnSlots(1), []
    await slots.acquire()
    tasks = await queued(slots, 3, order)
    assert order == [] and slots.waiting == 3
    slots.limit = 3  # a reload: two more may spawn now
    await asyncio.sleep(0)
    assert order == [0, 1] and slots.in_use == 3 and slots.waiting == 1
    slots.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and slots.in_use == 3


async def test_a_smaller_limit_lets_spawns_in_flight_finish_and_admits_nobody_until_below_it():
    slots, order = SpawnSlots(3), []
    for _ in range(3):
        await slots.acquire()
    tasks = await queued(slots, 1, order)
    slots.limit = 1
    slots.release()
    slots.release()
    await asyncio.sleep(0)
    assert order == [] and slots.in_use == 1  # the third spawn is still in flight: 1 is the new limit
    slots.release()
    await asyncio.gather(*tasks)
    assert order == [0] and slots.in_use == 1


async def test_cancelled_waiters_never_leak_a_slot():
    slots, order = SpawnSlots(1), []
    await slots.acquire()
    tasks = await queued(slots, 2, order)
    tasks[0].cancel()  # queued, then cancelled (a stop while waiting for a slot)
    await asyncio.gather(tasks[0], return_exceptions=True)
    slots.release()  # the slot goes to the next live waiter, not to the cancelled one
    await tasks[1]
    assert order == [1] and slots.in_use == 1 and slots.waiting == 0
    # handed over and cancelled in the same tick: the slot is passed on, not kept by nobody
    tasks = await queued(slots, 1, order)
    slots.release()
    tasks[0].cancel()
    await asyncio.gather(tasks[0], return_exceptions=True)
    assert slots.in_use == 0
    async with slots:
        assert slots.in_use == 1
    assert slots.in_use == 0


def test_limits_below_one_are_refused():
    with pytest.raises(ValueError):
        SpawnSlots(0)
    slots = SpawnSlots(2)
    with pytest.raises(ValueError):
        slots.limit = 0
    assert slots.limit == 2
    with pytest.raises(RuntimeError):
        slots.release()


async def test_reload_resizes_the_daemons_spawn_slots():
    sup = Supervisor(settings_from_dict({"worker": {"max_concurrent_spawns": 2}}))
    assert sup.spawn_slots.limit == 2
    plan = await apply_reload(sup, settings_from_dict({"worker": {"max_concurrent_spawns": 5}}))
    assert sup.spawn_slots.limit == 5 and plan.changed == ["worker"] and plan.not_applied == []
    await sup.shutdown()


async def test_urgent_waiters_go_before_the_queue_in_their_own_order():
    """A linked tenant's restart must not wait behind a flood of new, unlinked starts."""
    slots, order = SpawnSlots(1), []
    await slots.acquire()
    flood = await queued(slots, 3, order)

    async def urgent(i: int) -> None:
        await slots.acquire(urgent=True)
        order.append(i)

    urgents = [asyncio.create_task(urgent(i)) for i in (100, 101)]
    await asyncio.sleep(0)
    assert slots.waiting == 5
    for _ in range(5):
        slots.release()
        await asyncio.sleep(0)
    await asyncio.gather(*flood, *urgents)
    assert order == [100, 101, 0, 1, 2]
