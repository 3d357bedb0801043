"""psycopg 3 connections for the postgres backend: every one carries the timeouts the measurements require
(docs/cluster.md "Why these timeouts"). Imported only when `cluster.backend: postgres` (the single-host default never
imports psycopg).

- client (libpq) keepalives and `tcp_user_timeout`: a cut-off client gets an error instead of waiting ~2 h;
- server-side `tcp_keepalives_*` and `tcp_user_timeout`, per session through `options`: the server drops a silent
  session (and releases its node lock) no earlier than `release_after` s after it last heard from us, and not much
  later;
- `idle_in_transaction_session_timeout`: a stuck write transaction holding `FOR SHARE` on an owner row cannot block
  another node's epoch bump for longer than this;
- `application_name` = bsup:<node_id>:<role>, so `pg_stat_activity` shows who holds what.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg

from ..settings import ClusterSettings


def conninfo_kwargs(cs: ClusterSettings, role: str) -> dict[str, Any]:
    """libpq parameters added to the DSN (they override the same keys in it)."""
    release = cs.release_after
    # Both server-side paths to a drop must take at least `release` s: keepalive probing (idle + count * interval)
    # and unacknowledged data (tcp_user_timeout).
    idle = max(1, math.ceil(release / 2))
    interval = max(1, math.ceil((release - idle) / 3))
    opts = (f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} -c tcp_keepalives_count=3 "
            f"-c tcp_user_timeout={int(release * 1000)} "
            f"-c idle_in_transaction_session_timeout={int(cs.idle_in_transaction_timeout * 1000)} "
            f"-c lock_timeout={int(cs.statement_timeout * 1000)} -c statement_timeout={int(cs.statement_timeout * 1000)}")
    # The client side only has to notice sooner than the fence deadline; correctness never depends on it (fence.py).
    fence_ms = int(cs.fence_after * 1000)
    return {
        "application_name": f"bsup:{cs.node_id}:{role}"[:63],
        "options": opts,
        "keepalives": 1,
        "keepalives_idle": max(1, int(cs.fence_after / 4)),
        "keepalives_interval": 1,
        "keepalives_count": 2,
        "tcp_user_timeout": max(1000, fence_ms * 3 // 4),
        "connect_timeout": max(2, int(cs.fence_after)),
    }


async def connect(cs: ClusterSettings, role: str, *, autocommit: bool = True) -> psycopg.AsyncConnection:
    if not cs.dsn:
        raise ValueError("cluster: no DSN configured (dsn, dsn_env or dsn_file)")
    return await psycopg.AsyncConnection.connect(cs.dsn, autocommit=autocommit, **conninfo_kwargs(cs, role))


def connect_sync(cs: ClusterSettings, role: str) -> psycopg.Connection:
    """Blocking connection for commands (`db upgrade`, import/export) that run outside the daemon's loop."""
    if not cs.dsn:
        raise ValueError("cluster: no DSN configured (dsn, dsn_env or dsn_file)")
    return psycopg.connect(cs.dsn, autocommit=True, **conninfo_kwargs(cs, role))
