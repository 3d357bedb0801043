"""`baileys-supervisor db upgrade|status --config FILE`: the postgres backend's schema by hand (the daemon also
applies missing migrations at start). Registered by supervisor/cli.py; psycopg is imported only when run. Exit
codes are supervisor/cli.py's."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_db_command(sub: Any) -> None:
    db = sub.add_parser("db", help="cluster mode: the PostgreSQL schema (upgrade applies missing migrations)")
    db.add_argument("action", choices=("upgrade", "status"))
    db.add_argument("--config", required=True, help="YAML config file with a cluster: section")
    db.add_argument("--json", action="store_true", help="print JSON")
    db.set_defaults(func=cmd_db)


def cmd_db(args: argparse.Namespace) -> int:
    from ..cli import EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, _fail
    from ..config import load_settings

    settings = load_settings(args.config)
    if settings.cluster is None:
        return _fail(args, EXIT_USAGE, "no_cluster", f"{args.config}: no cluster: section (single-host mode has "
                     "no database)")
    import psycopg

    from . import pg, schema

    try:
        with pg.connect_sync(settings.cluster, "cli") as conn:
            applied = schema.upgrade_sync(conn) if args.action == "upgrade" else []
            with conn.cursor() as cur:
                version = schema._current(cur)
                nodes = conn.execute("SELECT count(*) FROM cluster_node").fetchone()[0] if version else 0
                tenants = conn.execute("SELECT count(*) FROM tenant_owner").fetchone()[0] if version else 0
    except psycopg.OperationalError as exc:
        # libpq's message names host and port, never the password
        return _fail(args, EXIT_UNREACHABLE, "db_unreachable", str(exc).strip().splitlines()[0][:300])
    except schema.SchemaError as exc:
        return _fail(args, EXIT_USAGE, "schema_newer", str(exc))
    out = {"ok": True, "schemaVersion": version, "latest": schema.LATEST, "applied": applied, "nodes": nodes,
           "tenants": tenants}
    print(json.dumps(out, indent=2) if args.json else
          f"schema version {version} (this daemon: {schema.LATEST}); applied now: {applied or 'none'}; "
          f"{nodes} nodes, {tenants} tenants")
    return EXIT_OK
