"""`baileys-supervisor doctor [TENANT]`: the seed's manual checks in one go, each with a verdict and what to do.

Library functions (the CLI only prints): `diagnose(api, storage_root, tenant=None) -> Report`. `api` is a callable
`(method, path) -> dict` that raises `ApiUnavailable` when the daemon does not answer (cli.py passes its HTTP client).
Verdicts: pass, warn (works but needs attention, e.g. waiting for a scan), fail (broken: the exit status is 1),
skip (not applicable or unknown, e.g. no server time reported yet).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from supervisor.states import CLOSE_CODES
from supervisor.storage import read_creds_linked

if TYPE_CHECKING:
    from supervisor.settings import ClusterSettings

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
SKEW_WARN_MS, SKEW_FAIL_MS = 5_000, 60_000  # WhatsApp's login and message timestamps get unreliable past a minute

_STATE_ADVICE = {
    "connected": (PASS, "connected", ""),
    "qr": (WARN, "waiting for a QR scan", "scan it: `baileys-supervisor qr T` or GET /whatsapp/T/qr"),
    "starting": (WARN, "starting", "in progress: run doctor again in a few seconds"),
    "connecting": (WARN, "connecting", "in progress: run doctor again in a few seconds"),
    "backoff": (WARN, "reconnecting after a failure", "see the last close check; backoff retries by itself"),
    "stopping": (WARN, "stopping", "wait, then `baileys-supervisor start T` if it should run"),
    "stopped": (WARN, "not running", "`baileys-supervisor start T` (or add it to tenants.boot)"),
    "logged_out": (FAIL, "logged out", "relink: `baileys-supervisor start T` and scan the new QR"),
    "conflict": (FAIL, "another client took over the session (440)", "find the other user of the auth, then start"),
    "failed": (FAIL, "failed: needs an operator", "see stateReason and the last close; fix, then start"),
}


class ApiUnavailable(Exception):
    pass


@dataclass
class Check:
    name: str
    verdict: str
    detail: str
    fix: str = ""


@dataclass
class Report:
    daemon: list[Check] = field(default_factory=list)
    tenants: dict[str, list[Check]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.verdict != FAIL for c in self.daemon + [c for cs in self.tenants.values() for c in cs])

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "daemon": [asdict(c) for c in self.daemon],
                "tenants": {t: [asdict(c) for c in cs] for t, cs in self.tenants.items()}}


Api = Callable[[str, str], dict[str, Any]]


def diagnose(api: Api, storage_root: Path, tenant: str | None = None, cluster: ClusterSettings | None = None
             ) -> Report:
    """`cluster` (the config's section, cluster mode): the cluster's checks are added (supervisor/cluster/checks.py)
    and only the tenants this node owns get the per-host checks (the others' files are on their owners' hosts)."""
    report = Report()
    if cluster is not None:
        from .cluster.checks import cluster_checks  # imports psycopg: cluster mode only

        report.daemon.extend(cluster_checks(cluster))
    health: dict[str, Any] | None = None
    try:
        health = api("GET", "/healthz")
        ok = bool(health.get("ok"))
        report.daemon.append(Check("daemon", PASS if ok else WARN,
                                   f"pid {health.get('pid')}, {health.get('tenants')} tenants, up "
                                   f"{health.get('uptime')} s" + ("" if ok else ", shutting down"),
                                   "" if ok else "wait for it to restart (systemd) or start it"))
    except ApiUnavailable as exc:
        report.daemon.append(Check("daemon", FAIL, str(exc), "start it: `systemctl start baileys-supervisor` or "
                                   "`baileys-supervisor run --config FILE`; check `journalctl -u baileys-supervisor`"))
    daemon_pid = health.get("pid") if health else None
    statuses: dict[str, dict[str, Any] | None] = {}
    if tenant is not None:
        statuses[tenant] = _status(api, tenant) if health else None
    elif health:
        statuses = {s["tenant"]: s for s in api("GET", "/whatsapp").get("tenants", [])}
    else:
        root = storage_root / "whatsapp"
        statuses = {p.name: None for p in sorted(root.iterdir()) if (p / "auth").is_dir()} if root.is_dir() else {}
    for tid, st in statuses.items():
        if cluster is not None and st is not None and st.get("owner") not in (None, cluster.node_id):
            continue  # running on another node: its doctor checks it
        report.tenants[tid] = tenant_checks(tid, st, storage_root / "whatsapp" / tid, daemon_pid, bool(health))
    return report


def _status(api: Api, tid: str) -> dict[str, Any] | None:
    try:
        return api("GET", f"/whatsapp/{tid}/status")
    except LookupError:  # the CLI maps HTTP 404 (unknown tenant) to LookupError
        return None


def tenant_checks(tid: str, st: dict[str, Any] | None, tdir: Path, daemon_pid: int | None,
                  daemon_up: bool) -> list[Check]:
    def t(text: str) -> str:
        return text.replace(" T", f" {tid}").replace("/T/", f"/{tid}/")

    out: list[Check] = []
    state = st.get("state") if st else None
    if st is None:
        out.append(Check("state", FAIL if daemon_up else SKIP, "unknown to the daemon" if daemon_up else
                         "daemon not reachable", t("`baileys-supervisor start T`") if daemon_up else ""))
    else:
        verdict, text, fix = _STATE_ADVICE.get(state, (WARN, state, ""))
        reason = f" (reason: {st.get('stateReason')})" if st.get("stateReason") else ""
        restarts = st.get("restarts") if isinstance(st.get("restarts"), int) else 0
        if state == "backoff" and restarts >= FAILING_RESTARTS:
            # Backoff heals a blip; after several restarts in a row it is an outage the operator must see (a
            # machine without DNS looked "OK" after five failed connects).
            verdict, text = FAIL, f"keeps failing: {restarts} restarts, still reconnecting"
            fix = network_fix(st.get("lastDisconnect")) or "see the last close check and the worker's log"
        out.append(Check("state", verdict, f"{state}: {text}{reason}", t(fix)))
    if state == "qr":
        out.append(Check("qr", PASS if st.get("hasQR") else FAIL, "a QR is waiting" if st.get("hasQR") else
                         "state qr but no QR", "" if st.get("hasQR") else t("`baileys-supervisor restart T`")))
    else:
        out.append(Check("qr", SKIP, "not waiting for a scan"))
    out.append(auth_check(tdir / "auth", state, t))
    out.append(process_check(tdir, st.get("pid") if st else None, daemon_pid,
                             standby_pid=st.get("standbyPid") if st else None))
    out.append(close_check(st.get("lastDisconnect") if st else None, t))
    out.append(clock_check(st.get("clock") if st else None))
    return out


def auth_check(auth: Path, state: str | None, t: Callable[[str], str]) -> Check:
    if not auth.is_dir():
        if state in ("qr", "starting", "connecting", None, "stopped"):
            return Check("auth", WARN if state is None else PASS, f"no auth directory at {auth} (normal before "
                         "the first scan)")
        return Check("auth", FAIL, f"no auth directory at {auth}", t("relink: `baileys-supervisor start T`"))
    files = sorted(p for p in auth.iterdir() if p.is_file())
    bad = []
    for p in files:
        if p.suffix == ".json":
            try:
                json.loads(p.read_text("utf-8"))
            except (OSError, ValueError):
                bad.append(p.name)
    creds = auth / "creds.json"
    if bad:
        return Check("auth", FAIL, f"{len(bad)} unparseable file(s): {', '.join(bad[:5])}",
                     t("stop T, move the auth directory aside and relink (`logout T` archives it)"))
    if not creds.exists():
        verdict = PASS if state in ("qr", "starting", "connecting") else WARN
        return Check("auth", verdict, f"{len(files)} files, no creds.json yet", "scan the QR to create it")
    return Check("auth", PASS, f"{len(files)} files, creds.json parseable, registered={read_creds_linked(auth)}")


def auth_users(tdir: Path, exclude: set[int]) -> dict[int, str]:
    """pid -> name of every process with its cwd or an open file (the inherited lock included) in the tenant dir."""
    prefix = str(tdir.resolve()) + os.sep
    found: dict[int, str] = {}
    for proc in psutil.process_iter(["name"]):
        if proc.pid in exclude:
            continue
        try:
            paths = [f.path for f in proc.open_files()] + [proc.cwd()]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if any(p.startswith(prefix) for p in paths):
            found[proc.pid] = proc.info["name"] or "?"
    return found


def process_check(tdir: Path, worker_pid: int | None, daemon_pid: int | None, *,
                  standby_pid: int | None = None) -> Check:
    if not tdir.is_dir():
        return Check("processes", SKIP, "no tenant directory")
    # The daemon's standby worker (worker.prewarm) holds the inherited lock but no socket and no auth file: not a
    # second user of the session.
    users = auth_users(tdir, {p for p in (daemon_pid, os.getpid(), standby_pid) if p})
    listed = ", ".join(f"{p} ({n})" for p, n in sorted(users.items()))
    if len(users) > 1:
        return Check("processes", FAIL, f"{len(users)} processes use the auth directory: {listed}",
                     "exactly one worker may use a session: stop the ones that are not the daemon's worker "
                     f"(pid {worker_pid}); two users cause 440 conflicts and corrupt auth")
    if users and worker_pid is not None and worker_pid not in users:
        return Check("processes", FAIL, f"the daemon's worker is {worker_pid} but {listed} uses the auth",
                     "stop the foreign process")
    if users and worker_pid is None:
        return Check("processes", FAIL, f"no worker should run, but {listed} uses the auth",
                     "a leftover: stop it (the daemon's next start also stops leftovers it recorded)")
    standby = f" (+ standby {standby_pid}, waiting to log in after the scan)" if standby_pid else ""
    return Check("processes", PASS, (f"lock holder = worker {worker_pid}" if users else "nobody uses the auth") + standby)


def close_check(last: dict[str, Any] | None, t: Callable[[str], str]) -> Check:
    if not last:
        return Check("last_close", PASS, "no close recorded since the daemon started")
    code = last.get("code")
    entry = CLOSE_CODES.get(code) if isinstance(code, int) else None
    meaning, fix = ((entry.meaning, entry.fix) if entry is not None else
                    ("unknown or no code", f"see the worker's log (journalctl) around {last.get('at')}"))
    verdict = FAIL if code in (401, 403, 411, 440) else (PASS if code == 515 else WARN)
    message = " ".join(str(last.get("message") or "").split())[:200]  # the worker's words: the real cause
    said = f" (worker: {message})" if message else ""
    return Check("last_close", verdict,
                 f"{code} {last.get('reason') or ''} at {last.get('at')}: {meaning}{said}".strip(),
                 network_fix(last) or t(fix))


FAILING_RESTARTS = 3  # restarts while in backoff from which the state check fails
# Node's network errors in a close message -> what they mean on this host.
_NETWORK_ERRORS = (
    (("ENOTFOUND", "EAI_AGAIN"), "DNS: this host cannot resolve WhatsApp's name; check /etc/resolv.conf, the "
                                 "network, or a proxy"),
    (("ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH"), "network: this host cannot reach WhatsApp; check the "
                                                      "route, the firewall (outbound 443) or a proxy"),
    (("ETIMEDOUT", "ECONNRESET", "socket hang up"), "network: connections to WhatsApp time out or are cut; "
                                                    "check the firewall (outbound 443), a proxy, or the link"),
    (("certificate", "CERT_", "self signed"), "TLS: the certificate chain is not trusted; a TLS-intercepting "
                                              "proxy needs NODE_EXTRA_CA_CERTS in worker.env"),
)


def network_fix(last: dict[str, Any] | None) -> str:
    """What to do when the worker's close message names a network error ("" when it does not)."""
    message = str((last or {}).get("message") or "")
    for needles, fix in _NETWORK_ERRORS:
        if any(n.lower() in message.lower() for n in needles):
            return fix
    return ""


def clock_check(clock: dict[str, Any] | None) -> Check:
    if not clock or not isinstance(clock.get("skewMs"), (int, float)):
        return Check("clock", SKIP, "unknown: no server time received yet (the worker reports it at login)")
    skew = clock["skewMs"]
    verdict = PASS if abs(skew) <= SKEW_WARN_MS else (WARN if abs(skew) <= SKEW_FAIL_MS else FAIL)
    side = "ahead of" if skew > 0 else "behind"
    return Check("clock", verdict, f"this host is {abs(skew) / 1000:.1f} s {side} WhatsApp's server time",
                 "" if verdict == PASS else "enable time sync: `timedatectl set-ntp true` (chrony/systemd-timesyncd)")


def render(report: Report) -> str:
    lines = [f"{c.verdict.upper():5} daemon      {c.detail}" + (f"\n      fix: {c.fix}" if c.fix else "")
             for c in report.daemon]
    for tid, checks in report.tenants.items():
        lines.append(f"tenant {tid}")
        for c in checks:
            lines.append(f"  {c.verdict.upper():5} {c.name:11} {c.detail}")
            if c.fix and c.verdict in (WARN, FAIL):
                lines.append(f"        fix: {c.fix}")
    warnings = sum(c.verdict == WARN for c in report.daemon + [c for cs in report.tenants.values() for c in cs])
    lines.append("verdict: " + ("PROBLEMS FOUND" if not report.ok else
                                f"OK with {warnings} warning(s)" if warnings else "OK"))
    return "\n".join(lines)
