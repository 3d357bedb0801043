"""`baileys-supervisor webhook dead-letters|retry`: the webhook's dead letters (docs/webhook.md "Dead letters"),
thin over the API (GET /webhook/dead-letters, POST /webhook/dead-letters/{id}/retry; supervisor/api_webhook.py).
Registered by supervisor/cli.py, whose URL/secret handling, exit codes and error rendering these share: an API
error (404 webhook_disabled, dead_letter_not_found, 409 already_pending, 503 spool_full, 400 bad input) exits 1.
Payloads (message contents, phone numbers) are never printed: the API returns them only on request, and the CLI
does not ask."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

COLUMNS = [("ID", "id"), ("TENANT", "tenant"), ("STATUS", "status"), ("ATTEMPTS", "attempts"),
           ("DEAD AT", "deadAt"), ("EVENT", "eventId")]


def add_webhook_command(sub: Any, common: argparse.ArgumentParser) -> None:
    wh = sub.add_parser("webhook", help="the webhook's dead letters: list them, put one back in its queue")
    acts = wh.add_subparsers(dest="action", required=True, metavar="ACTION")
    dl = acts.add_parser("dead-letters", parents=[common], help="list dead letters, oldest first")
    dl.add_argument("--tenant", help="only this tenant's")
    dl.add_argument("--limit", type=int, help="at most this many (the API's default 100, at most 1000)")
    dl.add_argument("--after", type=int, help="the page after this seq (the previous page's `next`)")
    dl.set_defaults(func=cmd_dead_letters)
    rt = acts.add_parser("retry", parents=[common],
                         help="put a dead letter back at the tail of its tenant's queue (same Idempotency-Key)")
    rt.add_argument("id", help="the dead letter's id (the ID column of `webhook dead-letters`)")
    rt.set_defaults(func=cmd_retry)


def format_dead_letters(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no dead letters"
    table = [[h for h, _ in COLUMNS]] + [["-" if r.get(k) is None else str(r[k]) for _, k in COLUMNS] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from .cli import EXIT_OK, call, endpoint

    url, secret = endpoint(args)
    query = {k: v for k, v in (("tenant", args.tenant), ("limit", args.limit), ("after", args.after)) if v is not None}
    path = "/webhook/dead-letters" + ("?" + urllib.parse.urlencode(query) if query else "")
    body = call(url, "GET", path, secret, args.timeout)
    if args.json:
        print(json.dumps(body, indent=2))
        return EXIT_OK
    print(format_dead_letters(body.get("deadLetters", [])))
    if body.get("next") is not None:  # a full page: there may be more (stderr: stdout stays the table)
        print(f"more may follow: add --after {body['next']}", file=sys.stderr)
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    from .cli import EXIT_OK, call, endpoint

    url, secret = endpoint(args)
    key = urllib.parse.quote(args.id, safe="")  # the daemon validates; "a/b" must not become two segments
    body = call(url, "POST", f"/webhook/dead-letters/{key}/retry", secret, args.timeout)
    if args.json:
        print(json.dumps(body, indent=2))
    elif body.get("requeued"):
        print(f"{body.get('id')}: back in tenant {body.get('tenant')}'s webhook queue (delivered under its old "
              "Idempotency-Key)")
    else:
        print(f"{body.get('id')}: already back in tenant {body.get('tenant')}'s webhook queue (nothing changed)")
    return EXIT_OK
