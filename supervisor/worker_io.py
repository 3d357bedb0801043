"""What passes between the daemon and a worker besides the protocol: the worker's environment (an allow-list) and
its stderr (re-emitted as `worker.log` events, never verbatim).

Split out of worker.py (the process's life cycle); both are about what may cross the boundary, in either direction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from supervisor import protocol
from supervisor.events import is_sensitive, scrub_text
from supervisor.settings import WORKER_MALLOC_ENV, WorkerSettings

log = structlog.get_logger("supervisor.worker")

# What a worker inherits from the daemon's environment: an allow-list, never the whole environment, which holds the
# API secret (INTERNAL_SECRET or whatever api.secret_env names, also the default webhook secret) and whatever else the
# service manager put there. Anything else a worker needs goes into `worker.env`.
_INHERITED = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SSL_CERT_FILE",
                        "SSL_CERT_DIR", "UV_THREADPOOL_SIZE"})
_INHERITED_PREFIXES = ("LC_", "NODE_", "MALLOC_")  # locale; Node's own (NODE_OPTIONS, NODE_EXTRA_CA_CERTS); glibc


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    # A name that says secret/token/password/... never passes, even under an allowed prefix (NODE_AUTH_TOKEN, an
    # api.secret_env called NODE_SECRET): worker.env can still pass one on purpose.
    return {k: v for k, v in environ.items()
            if (k in _INHERITED or k.startswith(_INHERITED_PREFIXES)) and not is_sensitive(k)}


def worker_env(settings: WorkerSettings, tenant: str, auth_dir: Path, lock_fd: int, *,
               standby: bool = False) -> dict[str, str]:
    env = {**WORKER_MALLOC_ENV, **inherited_env(os.environ)}
    env.update({
        "BSUP_PROTOCOL": str(protocol.PROTOCOL_VERSION),
        "BSUP_TENANT": tenant,
        "BSUP_AUTH_DIR": str(auth_dir.resolve()),
        "BSUP_LOCK_FD": str(lock_fd),
        "BSUP_BROWSER": json.dumps(list(settings.browser)),
        "BSUP_VERSION_POLICY": settings.version_policy,
        "BSUP_LOG_LEVEL": settings.log_level,
        "BSUP_HEARTBEAT_MS": str(int(settings.heartbeat_interval * 1000)),
    })
    if standby:
        env["BSUP_STANDBY"] = "1"  # up to hello, then wait for `go` (supervisor/standby.py)
    if settings.state_sync:
        env["BSUP_STATE_SYNC"] = "1"  # cluster mode: auth writes through the daemon (supervisor/cluster_state.py)
    if settings.wa_url:
        env["BSUP_WA_URL"] = settings.wa_url
    if settings.socket_options:
        env["BSUP_SOCKET_OPTIONS"] = json.dumps(settings.socket_options)
    env.update(settings.env)
    if not settings.state_sync:  # never from worker.env: without a cluster nobody would answer its writes
        env.pop("BSUP_STATE_SYNC", None)
    return env


_PINO_LEVELS = {10: "debug", 20: "debug", 30: "info", 40: "warning", 50: "error", 60: "critical"}
_MAX_LOG_MSG = 300  # worker log lines are truncated: a runaway worker must not flood the daemon's log
_STDERR_BURST, _STDERR_RATE = 20.0, 1.0  # stderr lines logged per worker: a burst of 20, then 1 per second


class StderrForwarder:
    """One worker's stderr lines as `worker.log` events, never verbatim: libraries print what they hold (libsignal's
    console.warn("Session already closed", session) inspects a private ratchet key within its first 500 characters).
    Only pino's level and msg pass; of msg only its first line, scrubbed by value (JIDs, numbers, key material)
    *before* it is cut, so no half of a key survives the cut; and at most _STDERR_BURST lines, then one per second
    (the count of dropped ones rides on the next line that passes, and on `worker.exited`)."""

    def __init__(self, tenant: str, clock: Any = time.monotonic) -> None:
        self.tenant = tenant
        self._clock = clock
        self._tokens, self._refilled = _STDERR_BURST, clock()
        self.suppressed = 0  # lines not logged (rate limit)
        self._reported = 0

    def forward(self, text: str) -> None:
        now = self._clock()
        self._tokens = min(_STDERR_BURST, self._tokens + (now - self._refilled) * _STDERR_RATE)
        self._refilled = now
        if self._tokens < 1:
            self.suppressed += 1
            return
        self._tokens -= 1
        level, msg, src = "info", text, "raw"
        with contextlib.suppress(ValueError):
            obj = json.loads(text)
            if isinstance(obj, dict):  # pino: only level and msg pass; other fields may hold creds/messages
                raw_level = obj.get("level")
                level = _PINO_LEVELS.get(raw_level, "info") if isinstance(raw_level, int) else "info"
                msg, src = str(obj.get("msg", "")), "console" if obj.get("src") == "console" else "pino"
        first, _, rest = msg.partition("\n")
        fields: dict[str, Any] = {"msg": scrub_text(first)[:_MAX_LOG_MSG]}
        if rest:
            fields["lines_dropped"] = rest.count("\n") + 1
        if self.suppressed > self._reported:
            fields["suppressed"] = self.suppressed - self._reported
            self._reported = self.suppressed
        log.log(getattr(logging, level.upper(), logging.INFO), "worker.log", tenant=self.tenant,
                worker_level=level, src=src, **fields)
