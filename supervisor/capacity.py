"""The daemon's process budget: `limits.max_processes` live Node processes (running tenants + standbys) and
`limits.max_standbys` standbys (docs/design.md, "Capacity").

A running tenant holds one place from its start until its restart loop ends (it rests or is stopped), also while it
backs off with no process alive: its own restarts never wait for, or lose their place to, other tenants' starts.
A standby holds a place of its own from its prewarm until it is promoted (from then on it is the tenant's worker,
covered by the tenant's place) or gone. Hence live processes <= places held <= max_processes at all times.

The limits are read at each admission (a callable), so a reload applies them at once; lowering one stops nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from supervisor.errors import AtCapacity
from supervisor.settings import LimitsSettings, WorkerSettings
from supervisor.standby import StandbySlot


class Place:
    """One held place. `release()` is idempotent: a standby's place is released when it is promoted and again when
    its task ends, a tenant's on every way out of its restart loop."""

    __slots__ = ("_budget", "_standby", "held")

    def __init__(self, budget: ProcessBudget, standby: bool) -> None:
        self._budget, self._standby, self.held = budget, standby, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._budget._release(self._standby)


class ProcessBudget:
    def __init__(self, limits: Callable[[], LimitsSettings]) -> None:
        self._limits = limits
        self.tenants = 0  # places held by running tenants
        self.standbys = 0  # places held by standbys

    @property
    def in_use(self) -> int:
        return self.tenants + self.standbys

    @property
    def limit(self) -> int:
        return self._limits().max_processes

    def check(self) -> None:
        """Raise AtCapacity (503) if a tenant start would not get a place; nothing is taken."""
        limit = self.limit
        if self.in_use >= limit:
            raise AtCapacity(f"{self.in_use} live worker processes (running tenants and standbys), the limit is "
                             f"{limit} (limits.max_processes): retry when a tenant stops", limit=limit)

    def tenant(self) -> Place:
        """A place for a tenant start, or AtCapacity."""
        self.check()
        self.tenants += 1
        return Place(self, standby=False)

    def standby(self) -> Place | None:
        """A place for a standby, or None: a standby is an optimisation and never refuses anything."""
        limits = self._limits()
        if self.standbys >= limits.max_standbys or self.in_use >= limits.max_processes:
            return None
        self.standbys += 1
        return Place(self, standby=True)

    def prewarm(self, slot: StandbySlot, settings: WorkerSettings, auth_dir: Path, lock_fd: int) -> Place | None:
        """Start `slot`'s standby within the budget: its place is taken first and released once the standby is gone
        (or earlier, by the caller, when it is promoted). None, and no standby, without a place."""
        place = self.standby()
        if place is None:
            return None
        slot.prewarm(settings, auth_dir, lock_fd)
        if slot.current is None:  # worker.prewarm is off
            place.release()
            return None
        slot.current.task.add_done_callback(lambda _t: place.release())
        return place

    def _release(self, standby: bool) -> None:
        if standby:
            self.standbys -= 1
        else:
            self.tenants -= 1


def unlimited() -> ProcessBudget:
    """For a Tenant built on its own (unit tests): no limit that a handful of tenants could reach."""
    return ProcessBudget(lambda: LimitsSettings(max_processes=1 << 30, max_standbys=1 << 30))
