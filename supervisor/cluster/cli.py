"""`baileys-supervisor db upgrade|status --config FILE`: the postgres backend's schema by hand (the daemon also
applies missing migrations at start). `db import|export`: auth directories into and out of the store (the logic is
supervisor/cluster/transfer.py). Registered by supervisor/cli.py; psycopg is imported only when run. Exit codes are
supervisor/cli.py's; import/export exit 1 (EXIT_API) when any tenant was not transferred."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_db_command(sub: Any) -> None:
    db = sub.add_parser("db", help="cluster mode: the PostgreSQL schema (upgrade applies missing migrations); "
                        "import/export of tenant auth directories")
    db.add_argument("action", choices=("upgrade", "status", "import", "export"))
    db.add_argument("--config", required=True, help="YAML config file with a cluster: section")
    db.add_argument("--json", action="store_true", help="print JSON")
    db.add_argument("--tenant", action="append", help="import: only this tenant (repeatable; default: every tenant "
                    "under the storage root); export: the tenant (required)")
    db.add_argument("--from", dest="source", help="import: a storage root holding whatsapp/<tenant>/auth (default: "
                    "the config's storage.root)")
    db.add_argument("--to", dest="target", help="export: a new (or empty) directory to write the tenant's auth files "
                    "into; with --all, a storage root (whatsapp/<tenant>/auth for each)")
    db.add_argument("--all", action="store_true", help="export: every tenant with state in the store")
    db.add_argument("--force", action="store_true", help="import: replace a tenant's state already in the store")
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

    if args.action in ("import", "export"):
        return _transfer(args, settings)
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


def _transfer(args: argparse.Namespace, settings: Any) -> int:
    from pathlib import Path

    import psycopg

    from ..cli import EXIT_API, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, _fail
    from . import pg, schema, transfer

    if args.action == "export" and (not args.target or (args.all == bool(args.tenant))
                                    or (args.tenant and len(args.tenant) != 1)):
        return _fail(args, EXIT_USAGE, "bad_arguments", "db export needs --to and either one --tenant (--to = its "
                     "auth directory) or --all (--to = a storage root)")
    try:
        with pg.connect_sync(settings.cluster, "cli") as conn:
            with conn.cursor() as cur:
                if schema._current(cur) < schema.LATEST:
                    return _fail(args, EXIT_USAGE, "schema_missing", "the database schema is not up to date: run "
                                 "`baileys-supervisor db upgrade` first")
            if args.action == "import":
                root = Path(args.source) if args.source else settings.storage.root
                results = transfer.import_many(conn, root, args.tenant, force=args.force)
                done = "imported"
            elif args.all:
                results = transfer.export_many(conn, Path(args.target))
                done = "exported"
            else:
                try:
                    results = [transfer.export_tenant(conn, args.tenant[0], Path(args.target))]
                except transfer.TransferError as exc:
                    results = [{"tenant": args.tenant[0], "status": exc.code, "message": str(exc)}]
                done = "exported"
    except psycopg.OperationalError as exc:
        return _fail(args, EXIT_UNREACHABLE, "db_unreachable", str(exc).strip().splitlines()[0][:300])
    ok = all(r["status"] == done for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "tenants": results}, indent=2))
    else:
        for r in results:
            detail = f"{r['files']} files, epoch {r['epoch']}" if r["status"] == done else r["message"]
            print(f"{r['tenant']}: {r['status']}: {detail}")
        if not results:
            print("no tenant auth directories found")
    return EXIT_OK if ok else EXIT_API
