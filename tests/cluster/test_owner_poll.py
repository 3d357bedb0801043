"""OwnerPoll (supervisor/cluster/owner_poll.py), unit tests of its logic with a fake store: requests waiting for a
dead owner's tenants share one read per POLL (the real reads: tests/cluster/test_forward_third_node.py)."""

from __future__ import annotations

import asyncio
import time

from supervisor.cluster.owner_poll import POLL, OwnerPoll


class FakeOwn:
    def __init__(self) -> None:
        self.rows: dict = {}
        self.calls: list[list[str]] = []

    async def owners_now(self, tids: list[str]) -> dict:
        self.calls.append(sorted(tids))
        await asyncio.sleep(0.01)  # a round trip
        return {t: r for t, r in self.rows.items() if t in tids}


def moved(row):
    return row[0] if row and row[0] != "dead" and row[3] else None


async def test_a_burst_of_waiters_shares_one_read_per_poll():
    own = FakeOwn()
    poll = OwnerPoll(own)
    tids = [f"t{i}" for i in range(20)]
    own.rows = {t: ("dead", 1, "http://dead", False) for t in tids}
    t0 = time.monotonic()
    waiters = [asyncio.create_task(poll.wait(t, moved, 5.0)) for t in tids for _ in range(5)]  # 100 requests
    await asyncio.sleep(0.5)
    own.rows = {t: ("c", 2, "http://c", True) for t in tids}  # the third node claimed them all
    assert await asyncio.gather(*waiters) == ["c"] * 100
    elapsed = time.monotonic() - t0
    assert len(own.calls) <= elapsed / POLL + 2, len(own.calls)  # one read per POLL, not one per request
    assert own.calls[0] == sorted(tids)  # every waiting tenant in the one query
    await asyncio.sleep(3 * POLL)
    n = len(own.calls)
    await asyncio.sleep(3 * POLL)
    assert len(own.calls) == n  # nobody waits: no reads
    await poll.close()


async def test_timeout_and_a_check_that_looks_beyond_the_row():
    own = FakeOwn()
    poll = OwnerPoll(own)
    t0 = time.monotonic()
    assert await poll.wait("x", moved, 0.3) is None  # nobody owns it: None after the timeout
    assert 0.3 <= time.monotonic() - t0 < 5
    taken = []
    waiter = asyncio.create_task(poll.wait("y", lambda row: "ours" if taken else None, 5.0))
    await asyncio.sleep(0.2)
    taken.append(1)  # e.g. our own claim round took it (own.owned): seen at the next read
    assert await waiter == "ours"
    own.rows = {"z": ("c", 2, "http://c", True)}

    async def failing(tids):
        raise OSError("store away")
    own.owners_now = failing  # type: ignore[method-assign]
    assert await poll.wait("z", moved, 0.3) is None  # a failing store: nobody known, no exception
    await poll.close()


async def test_fresh_answers_come_from_a_read_started_after_the_call_shared_by_a_burst():
    """api_forward asks "is the owner alive?" after a failed forward: the answer must not be a read from before the
    failure (the owner alive then), and a burst of such questions shares the reads."""
    own = FakeOwn()
    poll = OwnerPoll(own)
    own.rows = {"t": ("a", 1, "http://a", True)}
    keep = asyncio.create_task(poll.wait("t", lambda row: None, 5.0))  # keeps the loop reading meanwhile
    await asyncio.sleep(2.5 * POLL)
    assert poll.rows["t"][3] is True  # the last read: a alive
    own.rows = {"t": ("a", 1, "http://a", False)}  # a dies; the cached read still says alive
    n = len(own.calls)
    answers = await asyncio.gather(*(poll.wait("t", lambda row: row, 5.0, fresh=True) for _ in range(50)))
    assert {a[3] for a in answers} == {False}  # every answer from a read after the question
    assert len(own.calls) - n <= 3  # 50 questions, one or two reads
    own.rows = {}
    assert await poll.wait("t", lambda row: row or "nobody", 5.0, fresh=True) == "nobody"  # no owner row

    async def failing(tids):
        raise OSError("store away")
    own.owners_now = failing  # type: ignore[method-assign]
    t0 = time.monotonic()
    assert await poll.wait("t", lambda row: row or "nobody", 0.5, fresh=True) is None  # failed reads answer nothing
    assert time.monotonic() - t0 >= 0.5
    keep.cancel()
    await poll.close()
