"""`baileys-supervisor`: a thin argparse layer. `run` starts the daemon; the other commands talk to a running
daemon over its HTTP API. Exit codes live here and only here:
0 ok, 1 the API answered with an error, 2 usage or configuration error, 3 daemon unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from .config import load_settings
from .errors import ConfigError, SupervisorError
from .cli_render import HINT_401, format_table, why_not_running
from .settings import PROJECT_ROOT

__all__ = ["main", "format_table", "call", "endpoint"]  # format_table: re-exported for its tests

EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "baileys-supervisor.yaml"


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message") or f"HTTP {status}")
        self.status, self.body = status, body
        self.hint: str | None = None  # what to do, when the CLI knows more than the API's message


class Unreachable(Exception):
    pass


def call(url: str, method: str, path: str, secret: str | None, timeout: float,
         body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One API call; JSON in, JSON out. Raises ApiError (HTTP error answer) or Unreachable (no answer)."""
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url.rstrip("/") + path, method=method, data=data)
    req.add_header("Accept", "application/json")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if secret:
        req.add_header("X-Internal-Secret", secret)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - operator-given http URL
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        body.setdefault("error", f"http_{exc.code}")
        raise ApiError(exc.code, body) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"cannot reach the daemon at {url}: {reason}") from None


def endpoint(args: argparse.Namespace) -> tuple[str, str | None]:
    """API URL and secret: --url wins for the URL; the config (which also reads INTERNAL_SECRET) for the rest."""
    config = Path(args.config) if args.config else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    secret = None
    url = args.url
    if config is not None:
        settings = load_settings(config)
        secret = settings.api.secret
        if url is None:
            host = settings.api.host
            host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
            host = f"[{host}]" if ":" in host and not host.startswith("[") else host
            url = f"http://{host}:{settings.api.port}"
    return url or "http://127.0.0.1:3300", secret or os.environ.get("INTERNAL_SECRET") or None


def _q(tenant: str) -> str:
    return urllib.parse.quote(tenant, safe="")  # the daemon validates; "a/b" must not become two segments


# -- commands -------------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)  # first: a bad config exits 2 before anything starts

    from .runner import run_daemon  # the daemon pulls in everything; operator commands stay light
    from .events import configure_logging

    configure_logging(settings.logging.format, settings.logging.level)
    try:
        result = asyncio.run(run_daemon(settings))
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down: still an operator-requested stop
        return EXIT_OK
    except OSError as exc:  # e.g. the API port is taken: one clear line, not a traceback
        print(f"baileys-supervisor: cannot run: {exc}", file=sys.stderr)
        return EXIT_API
    except ConfigError:
        raise  # exit 2 in main()
    except SupervisorError as exc:  # e.g. SpoolLocked: another daemon owns this storage's webhook spool
        print(f"baileys-supervisor: cannot run: {exc.code}: {exc}", file=sys.stderr)
        return EXIT_API
    return result if isinstance(result, int) else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    url, secret = endpoint(args)
    if args.tenant:
        rows = [call(url, "GET", f"/whatsapp/{_q(args.tenant)}/status", secret, args.timeout)]
    else:
        rows = call(url, "GET", "/whatsapp", secret, args.timeout).get("tenants", [])
    if args.json:
        print(json.dumps(rows[0] if args.tenant else rows, indent=2))
    else:
        print(format_table(rows))
    return EXIT_OK


def cmd_action(args: argparse.Namespace) -> int:
    url, secret = endpoint(args)
    result = call(url, "POST", f"/whatsapp/{_q(args.tenant)}/{args.command}", secret, args.timeout)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table([result]))
        if result.get("state") == "backoff":  # "ok" alone would hide that nothing happens until the next retry
            print(f"{args.tenant}: {why_not_running(result)}", file=sys.stderr)
    return EXIT_OK


_NO_QR_COMING = {"connected", "stopped", "failed", "logged_out", "conflict", "backoff"}


def cmd_qr(args: argparse.Namespace) -> int:
    """Right after `start` there is no QR yet: wait for one (up to --wait s) unless the state says none is coming."""
    from .qr import terminal_text

    url, secret = endpoint(args)
    deadline = time.monotonic() + args.wait
    while True:
        body = call(url, "GET", f"/whatsapp/{_q(args.tenant)}/qr", secret, args.timeout)
        state = body.get("state")
        if body.get("qr") or state in _NO_QR_COMING or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    raw = body.get("qr")
    if args.json:
        print(json.dumps({k: body.get(k) for k in ("tenant", "state", "connected", "qr")}, indent=2))
        return EXIT_OK if raw or body.get("connected") else EXIT_API
    if raw:
        sys.stdout.write(terminal_text(raw))
        print(f"{args.tenant}: scan with WhatsApp > Linked devices > Link a device (state: {state})")
        return EXIT_OK
    if body.get("connected"):
        print(f"{args.tenant}: no QR needed: already linked and connected")
        return EXIT_OK
    try:
        st = call(url, "GET", f"/whatsapp/{_q(args.tenant)}/status", secret, args.timeout)
    except ApiError as exc:
        if exc.status != 404:
            raise
        st = {"state": "stopped", "stateReason": "never started"}
    waited = "" if state in _NO_QR_COMING else f" after waiting {args.wait:g} s"
    hint = {"stopped": "`start` it first", "logged_out": "`start` it for a new QR",
            "backoff": "run `qr` again after the next attempt", "conflict": "stop the other client, then `start`",
            "failed": "see the reason, fix it, then `start`"}.get(str(state), "try again in a few seconds")
    print(f"{args.tenant}: no QR{waited}: {why_not_running(st)}; {hint}", file=sys.stderr)
    return EXIT_API


def cmd_pairing_code(args: argparse.Namespace) -> int:
    url, secret = endpoint(args)
    try:
        body = call(url, "POST", f"/whatsapp/{_q(args.tenant)}/pairing-code", secret, args.timeout,
                    {"phone": args.phone})
    except ApiError as exc:
        if exc.body.get("error") in ("not_running", "not_ready"):  # say why: the state, its reason, the last close
            with contextlib.suppress(ApiError, Unreachable):
                st = call(url, "GET", f"/whatsapp/{_q(args.tenant)}/status", secret, args.timeout)
                exc.hint = f"{args.tenant} is {why_not_running(st)}" + (
                    "; `start` it and wait for its QR, then ask for the code" if exc.body["error"] == "not_running"
                    else "; the code can be asked for once a QR is shown: retry in a few seconds")
        raise
    if args.json:
        print(json.dumps(body, indent=2))
        return EXIT_OK
    code = str(body.get("code") or "")
    shown = f"{code[:4]}-{code[4:]}" if len(code) == 8 else code  # how WhatsApp itself shows a code
    print(f"{args.tenant}: on the phone of {args.phone}: WhatsApp > Linked devices > Link a device > "
          f"Link with phone number instead, then enter {shown}")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor
    from .settings import StorageSettings

    url, secret = endpoint(args)
    config = Path(args.config) if args.config else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    settings = load_settings(config) if config else None
    storage = settings.storage.root if settings else StorageSettings().root

    def api(method: str, path: str) -> dict[str, Any]:
        try:
            return call(url, method, path, secret, args.timeout)
        except Unreachable as exc:
            raise doctor.ApiUnavailable(str(exc)) from None
        except ApiError as exc:
            if exc.status == 404:
                raise LookupError(str(exc)) from None
            raise

    tenant = args.tenant
    if tenant is not None:
        _q(tenant)
    report = doctor.diagnose(api, storage, tenant, settings.cluster if settings else None)
    print(json.dumps(report.to_dict(), indent=2) if args.json else doctor.render(report))
    return EXIT_OK if report.ok else EXIT_API


# -- parser ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help=f"YAML config (default: {DEFAULT_CONFIG} if present)")
    common.add_argument("--url", help="daemon API URL (default: from the config's api.host/api.port)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the daemon")

    parser = argparse.ArgumentParser(prog="baileys-supervisor", description="Keeps one WhatsApp (Baileys) worker per tenant alive.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", required=True, help="YAML config file")
    run.set_defaults(func=cmd_run)
    st = sub.add_parser("status", parents=[common], help="show one tenant or all")
    st.add_argument("tenant", nargs="?")
    st.set_defaults(func=cmd_status)
    for name, text in (("start", "start a tenant (idempotent)"), ("stop", "stop a tenant"),
                       ("restart", "restart a tenant"), ("logout", "log a tenant out and archive its auth")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("tenant")
        p.set_defaults(func=cmd_action)
    qr = sub.add_parser("qr", parents=[common], help="draw a tenant's current QR in the terminal")
    qr.add_argument("tenant")
    qr.add_argument("--wait", type=float, default=20.0,
                    help="seconds to wait for a QR while the tenant starts (default 20; 0: do not wait)")
    qr.set_defaults(func=cmd_qr)
    pc = sub.add_parser("pairing-code", parents=[common],
                        help="link a tenant by phone number instead of a QR: prints the code to type on the phone")
    pc.add_argument("tenant")
    pc.add_argument("phone", help="the WhatsApp number to link, international format (e.g. 972501234567)")
    pc.set_defaults(func=cmd_pairing_code)
    doc = sub.add_parser("doctor", parents=[common], help="check the daemon and tenants; a verdict and a fix per check")
    doc.add_argument("tenant", nargs="?")
    doc.set_defaults(func=cmd_doctor)
    from .cli_webhook import add_webhook_command  # `webhook dead-letters|retry`
    from .cluster.cli import add_db_command  # `db upgrade|status` (cluster mode; psycopg imported only when run)

    add_webhook_command(sub, common)
    add_db_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    try:
        return args.func(args)
    except ConfigError as exc:
        return _fail(args, EXIT_USAGE, "config_error", str(exc))
    except ApiError as exc:
        hint = HINT_401 if exc.status == 401 else exc.hint
        return _fail(args, EXIT_API, str(exc.body.get("error")), f"{exc} (HTTP {exc.status})", exc.status, hint)
    except Unreachable as exc:
        return _fail(args, EXIT_UNREACHABLE, "unreachable", str(exc))


def _fail(args: argparse.Namespace, code: int, error: str, message: str, status: int | None = None,
          hint: str | None = None) -> int:
    """An error on stderr for people; with --json, as JSON on stdout too, where a script reads the answers."""
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": error, "message": message, "status": status, "hint": hint,
                          "exitCode": code}, indent=2))
    print(f"baileys-supervisor: {error}: {message}" + (f"\n  hint: {hint}" if hint else ""), file=sys.stderr)
    return code
