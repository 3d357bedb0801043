"""Doctor checks for cluster mode: `cluster_checks(cs) -> list[Check]` (supervisor/doctor.py's Check and verdicts),
so `doctor` can append them when the config has a `cluster:` section. Blocking (a sync connection): the doctor is a
command, not the daemon."""

from __future__ import annotations

from typing import Any

from ..doctor import FAIL, PASS, WARN, Check
from ..settings import ClusterSettings
from . import schema

# Advisory locks a healthy cluster holds: one per node (plus transient takeover locks). Far more means someone takes
# per-tenant locks on this server: at ~12.8k (defaults) the whole server fails with "out of shared memory".
LOCKS_WARN = 1000


def cluster_checks(cs: ClusterSettings) -> list[Check]:
    import psycopg

    from . import pg

    try:
        conn = pg.connect_sync(cs, "doctor")
    except psycopg.OperationalError as exc:
        return [Check("cluster.database", FAIL, f"cannot connect: {str(exc).strip().splitlines()[0][:200]}",
                      "check cluster.dsn (host, port, user) and that PostgreSQL accepts this host (pg_hba.conf)")]
    with conn:
        return [Check("cluster.database", PASS, f"connected ({conn.info.parameter_status('server_version')})"),
                *_checks(conn, cs)]


def _checks(conn: Any, cs: ClusterSettings) -> list[Check]:
    out: list[Check] = []
    with conn.cursor() as cur:
        version = schema._current(cur)
    if version != schema.LATEST:
        out.append(Check("cluster.schema", FAIL if version > schema.LATEST else WARN,
                         f"schema version {version}, this daemon's {schema.LATEST}",
                         "upgrade the daemon" if version > schema.LATEST else "`baileys-supervisor db upgrade` (the "
                         "daemon also applies it at start)"))
        return out
    out.append(Check("cluster.schema", PASS, f"schema version {version}"))
    rows = conn.execute(
        "SELECT n.node_id, n.draining, EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' "
        "AND l.classid = %s AND l.objid = n.lock_key::oid AND l.objsubid = 2 AND l.granted AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())) FROM cluster_node n ORDER BY 1",
        (schema.LOCK_NS,)).fetchall()
    alive = [n for n, _, a in rows if a]
    me = next((a for n, _, a in rows if n == cs.node_id), None)
    out.append(Check("cluster.node", PASS if me else WARN,
                     f"this node ({cs.node_id}) {'holds its lock' if me else 'is not running (its lock is free)'}; "
                     f"{len(alive)} of {len(rows)} nodes alive", "" if me else "start the daemon on this host"))
    unowned = conn.execute("SELECT count(*) FROM tenant_owner WHERE wanted AND owner IS NULL").fetchone()[0]
    dead_owned = conn.execute(
        "SELECT count(*) FROM tenant_owner WHERE wanted AND owner IS NOT NULL AND NOT owner = ANY(%s)",
        (alive,)).fetchone()[0]
    waiting = unowned + dead_owned
    out.append(Check("cluster.tenants", PASS if not waiting else WARN,
                     f"{waiting} started tenants without a live owner" if waiting else "every started tenant has a "
                     "live owner", "" if not waiting else "normal for a few seconds after a node dies; if it stays, "
                     "the live nodes are at max_tenants: raise it or add a node"))
    locks = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0]
    out.append(Check("cluster.locks", PASS if locks < LOCKS_WARN else WARN, f"{locks} advisory locks on the server",
                     "" if locks < LOCKS_WARN else "something takes per-tenant locks: the lock table (~12.8k at "
                     "defaults) overflowing fails the whole server"))
    idle_tx = conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0]
    out.append(Check("cluster.session_settings", PASS if idle_tx not in ("0", "0ms") else FAIL,
                     f"this session: idle_in_transaction_session_timeout={idle_tx}, tcp_user_timeout="
                     f"{conn.execute('SHOW tcp_user_timeout').fetchone()[0]}",
                     "" if idle_tx not in ("0", "0ms") else "a pooler (PgBouncer in transaction mode?) drops "
                     "per-session options: connect to PostgreSQL directly"))
    return out
