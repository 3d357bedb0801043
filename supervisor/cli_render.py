"""What the CLI prints for people: the status table, one-sentence explanations of a tenant's state, the 401 hint.
Split out of cli.py (argument parsing, HTTP, exit codes), which prints these."""

from __future__ import annotations

from typing import Any

HINT_401 = ("the daemon wants its API secret: export INTERNAL_SECRET=<secret> (or the variable the daemon's "
            "api.secret_env names), or pass --config <the daemon's config file> (api.secret / api.secret_file)")


def why_not_running(st: dict[str, Any]) -> str:
    """One sentence from a status: what the tenant is doing, why, and when it tries again."""
    state, reason = st.get("state"), st.get("stateReason")
    text = {"backoff": "reconnecting after a failure", "stopped": "not running", "failed": "failed",
            "logged_out": "logged out (the next start shows a new QR)", "conflict": "another client took the session",
            "starting": "starting", "connecting": "connecting to WhatsApp", "connected": "linked and connected",
            "qr": "waiting for a scan", "stopping": "stopping"}.get(str(state), str(state))
    parts = [f"{text}" + (f" ({reason})" if reason else "")]
    if st.get("lastDisconnect"):
        parts.append(f"last close: {last_close(st['lastDisconnect'])}")
    if st.get("nextRetryAt"):
        parts.append(f"next attempt at {st['nextRetryAt']}")
    return "; ".join(parts)


COLUMNS = [("TENANT", "tenant"), ("STATE", "state"), ("CONNECTED", "connected"), ("QR", "hasQR"), ("PID", "pid"),
           ("RESTARTS", "restarts"), ("LAST CLOSE", "lastDisconnect"), ("NEXT RETRY", "nextRetryAt"),
           ("REASON", "stateReason")]


def last_close(v: dict[str, Any]) -> str:
    """`408 timedOut: getaddrinfo ENOTFOUND web.whatsapp.com`: the worker's message is the real cause."""
    text = f"{v.get('code')} {v.get('reason') or ''}".strip()
    message = " ".join(str(v.get("message") or "").split())
    return f"{text}: {message[:80]}" if message else text


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(row: dict[str, Any], key: str) -> str:
        v = row.get(key)
        if key == "lastDisconnect" and isinstance(v, dict):
            return last_close(v)
        if isinstance(v, bool):
            return "yes" if v else "no"
        return "-" if v is None else str(v)

    if not rows:
        return "no tenants"
    table = [[h for h, _ in COLUMNS]] + [[cell(r, k) for _, k in COLUMNS] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)
