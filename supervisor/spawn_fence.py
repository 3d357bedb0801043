"""What a worker spawned by a cluster node gets that a single-host worker does not (docs/cluster.md "Workers of a
cluster node: lease and PDEATHSIG"):

- `PR_SET_PDEATHSIG = SIGKILL`, set in the child before exec: a SIGKILLed daemon takes its workers with it at once,
  even one that ignores stdin EOF or is stuck (a takeover elsewhere can take under 100 ms; across hosts no flock
  covers the gap). The signal fires when the *thread* that forked exits: workers are spawned on the event loop's
  thread (asyncio's subprocess transport calls Popen there; `tests/cluster/test_lease.py` checks it), never in
  `asyncio.to_thread`. Not in single-host mode: there a dying daemon's workers flush their pending auth writes on
  stdin EOF (a SIGKILL would lose them) and the flock already covers the gap; and `preexec_fn` turns the vfork spawn
  into a full fork.
- its first `lease` (the node's lease end, epoch ms) written to its stdin right after the spawn, before any other
  command: a worker spawned just before the daemon is SIGSTOPped still has a deadline. cluster_node.py sends every
  later one at each renewal.

Process-wide on purpose: one daemon per process, and cluster mode is the whole daemon's mode. ClusterNode.start sets
`lease_source` before any tenant is claimed; close() clears it.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

lease_source: Callable[[], int] | None = None  # cluster mode: the lease's end in epoch ms; None: single host


@functools.cache
def _prctl() -> Any:
    import ctypes  # only in cluster mode: the single-host daemon never loads it

    return ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when the forking thread (ours) exits. If the daemon died between the
    fork and the prctl the signal would never come: then the child kills itself (its parent changed)."""
    parent, prctl = os.getpid(), _prctl()  # resolved in the parent: the child only calls it

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
