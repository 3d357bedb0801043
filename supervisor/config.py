"""Strict YAML loader: one file -> `Settings`, or a `ConfigError` naming the file and the key path.

Strict on purpose: a typo such as `stop_grace_s` silently falling back to a default is how a daemon ends up
"fine" while doing something else than the operator asked for.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from pathlib import Path
from typing import Any

import yaml

from .config_types import _backoff, _bool, _choice, _Ctx, _int, _mapping, _names, _path, _pos_float, _str
from .errors import ConfigError
from .ids import TENANT_ID_PATTERN, is_tenant_id
from .settings import (
    ApiSettings,
    LimitsSettings,
    LoggingSettings,
    RestartSettings,
    Settings,
    StorageSettings,
    TenantsSettings,
    WorkerSettings,
)

VERSION_RE = re.compile(r"^2\.3000\.\d+$")
SOCKET_OPTION_KEYS = ("connectTimeoutMs", "keepAliveIntervalMs", "defaultQueryTimeoutMs", "qrTimeout")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
WORKER_LOG_LEVELS = ("fatal", "error", "warn", "info", "debug", "trace", "silent")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Keys of the file that are not Settings fields (they only feed the resolved api.secret).
_API_SECRET_KEYS = ("secret", "secret_env", "secret_file")


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read and validate one YAML file. Every problem is a ConfigError whose message starts with the file name."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror or exc}", file=str(p)) from None
    except UnicodeDecodeError as exc:  # found by tests/test_fuzz_config.py: a binary file is a config error too
        raise ConfigError(f"{p}: not UTF-8 text: {exc.reason} at byte {exc.start}", file=str(p)) from None
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an int over Python's int-string digit limit
        raise ConfigError(f"{p}: invalid YAML: {str(exc)[:300]}", file=str(p)) from None
    return settings_from_dict({} if data is None else data, source=p)


def settings_from_dict(data: Any, source: str | os.PathLike[str] | None = None) -> Settings:
    """Validate an already-parsed mapping. Relative paths resolve against the source file's directory (or cwd)."""
    src = Path(source) if source is not None else None
    ctx = _Ctx(str(src) if src else "<config>", (src.resolve().parent if src else Path.cwd()))
    top = _mapping(ctx, "", data, ("storage", "api", "worker", "restart", "tenants", "limits", "logging",
                                          "webhook", "cluster", "outbox"))
    storage, api = _storage(ctx, top.get("storage")), _api(ctx, top.get("api"))
    from .config_outbox import outbox_config
    from .config_webhook import webhook_config  # split out: this module stays one screenful per section
    from .config_cluster import cluster_config

    cluster = cluster_config(ctx, top.get("cluster"))  # None = single host; docs/cluster.md
    worker = _worker(ctx, top.get("worker"))
    return Settings(
        storage=storage,
        api=api,
        worker=dataclasses.replace(worker, state_sync=True) if cluster is not None else worker,
        restart=_restart(ctx, top.get("restart")),
        tenants=_tenants(ctx, top.get("tenants")),
        limits=_limits(ctx, top.get("limits")),
        logging=_logging(ctx, top.get("logging")),
        webhook=webhook_config(ctx, top.get("webhook"), storage_root=storage.root, api_secret=api.secret),
        cluster=cluster,
        outbox=outbox_config(ctx, top.get("outbox"), storage_root=storage.root),
        source=src.resolve() if src else None,
    )


# -- sections -------------------------------------------------------------------------------------------------


def _storage(ctx: _Ctx, raw: Any) -> StorageSettings:
    d = _mapping(ctx, "storage", raw, _names(StorageSettings))
    out: dict[str, Any] = {}
    if "root" in d:
        out["root"] = _path(ctx, "storage.root", d["root"])
    return StorageSettings(**out)


def _api(ctx: _Ctx, raw: Any) -> ApiSettings:
    allowed = tuple(n for n in _names(ApiSettings)) + ("secret_env", "secret_file")
    d = _mapping(ctx, "api", raw, allowed)
    out: dict[str, Any] = {}
    if "host" in d:
        out["host"] = _str(ctx, "api.host", d["host"])
    if "port" in d:
        out["port"] = _int(ctx, "api.port", d["port"], lo=0, hi=65535, what="an integer port 0..65535")
    if "max_body_bytes" in d:
        out["max_body_bytes"] = _int(ctx, "api.max_body_bytes", d["max_body_bytes"], lo=1)
    for name in ("idle_timeout", "body_timeout"):
        if name in d:
            out[name] = _pos_float(ctx, f"api.{name}", d[name])
    if "max_connections" in d:
        out["max_connections"] = _int(ctx, "api.max_connections", d["max_connections"], lo=1)
    out["secret"] = _secret(ctx, d)
    settings = ApiSettings(**out)
    if not settings.secret and not is_loopback(settings.host):
        raise ConfigError(
            f"{ctx.source}: api.host: {settings.host!r} is not a loopback address; "
            "set api.secret, api.secret_file or the api.secret_env variable before exposing the API",
            key="api.host",
            file=ctx.source,
        )
    return settings


def _secret(ctx: _Ctx, d: dict[str, Any]) -> str | None:
    """Precedence: `secret` in the file, then the file at `secret_file`, then the env var `secret_env`."""
    secret = d.get("secret")
    if secret is not None:
        secret = _str(ctx, "api.secret", secret)
        return secret or None
    secret_file = d.get("secret_file")
    if secret_file is not None:
        p = _path(ctx, "api.secret_file", secret_file)
        try:
            # systemd credentials and `echo > file` both leave a trailing newline that is not part of the secret.
            value = p.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                f"{ctx.source}: api.secret_file: cannot read {str(p)!r}: {exc.strerror or exc}",
                key="api.secret_file",
                file=ctx.source,
            ) from None
        if not value:
            raise ConfigError(f"{ctx.source}: api.secret_file: {str(p)!r} is empty", key="api.secret_file")
        return value
    env_name = d.get("secret_env", "INTERNAL_SECRET")
    if env_name is None:
        return None  # explicitly no env lookup
    env_name = _str(ctx, "api.secret_env", env_name)
    if not ENV_NAME_RE.match(env_name):
        raise ctx.fail("api.secret_env", "an environment variable name", env_name)
    return os.environ.get(env_name) or None


def _worker(ctx: _Ctx, raw: Any) -> WorkerSettings:
    d = _mapping(ctx, "worker", raw, tuple(n for n in _names(WorkerSettings) if n != "state_sync"))
    out: dict[str, Any] = {}
    if d.get("command") is not None:
        cmd = d["command"]
        if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) and a and "\x00" not in a for a in cmd):
            raise ctx.fail("worker.command", "a non-empty list of strings (argv)", cmd)
        out["command"] = tuple(_resolve_argv0(ctx, cmd))
    if "env" in d:
        env = _mapping(ctx, "worker.env", d["env"], None)
        clean: dict[str, str] = {}
        for k, v in env.items():
            if not isinstance(k, str) or not ENV_NAME_RE.match(k):
                raise ctx.fail("worker.env", "environment variable names as keys", k)
            if isinstance(v, bool) or not isinstance(v, (str, int, float)) or "\x00" in str(v):
                raise ctx.fail(f"worker.env.{k}", "a string without NUL bytes", v)
            clean[k] = str(v)
        out["env"] = clean
    if "wa_url" in d and d["wa_url"] is not None:
        url = _str(ctx, "worker.wa_url", d["wa_url"])
        if not re.match(r"^wss?://[^\s/]+", url):
            raise ctx.fail("worker.wa_url", "a ws:// or wss:// URL", url)
        out["wa_url"] = url
    if "browser" in d:
        b = d["browser"]
        if not isinstance(b, list) or len(b) != 3 or not all(isinstance(x, str) and x for x in b):
            raise ctx.fail("worker.browser", "a list of exactly 3 non-empty strings", b)
        out["browser"] = tuple(b)
    if "version_policy" in d:
        v = d["version_policy"]
        if not isinstance(v, str) or not (v in ("bundled", "latest") or VERSION_RE.match(v)):
            raise ctx.fail("worker.version_policy", "bundled, latest or 2.3000.N", v)
        out["version_policy"] = v
    if "log_level" in d:
        out["log_level"] = _choice(ctx, "worker.log_level", d["log_level"], WORKER_LOG_LEVELS)
    if "socket_options" in d:
        so = _mapping(ctx, "worker.socket_options", d["socket_options"], SOCKET_OPTION_KEYS)
        out["socket_options"] = {k: _int(ctx, f"worker.socket_options.{k}", v, lo=1) for k, v in so.items()}
    for name in ("heartbeat_interval", "heartbeat_timeout", "stop_grace"):
        if name in d:
            out[name] = _pos_float(ctx, f"worker.{name}", d[name])
    if "prewarm" in d:
        out["prewarm"] = _bool(ctx, "worker.prewarm", d["prewarm"])
    if "max_concurrent_spawns" in d:
        out["max_concurrent_spawns"] = _int(ctx, "worker.max_concurrent_spawns", d["max_concurrent_spawns"], lo=1)
    w = WorkerSettings(**out)
    if w.heartbeat_timeout <= w.heartbeat_interval:
        raise ctx.fail(
            "worker.heartbeat_timeout", f"a number > heartbeat_interval ({w.heartbeat_interval})", w.heartbeat_timeout
        )
    return w


def _resolve_argv0(ctx: _Ctx, argv: list[str]) -> list[str]:
    """Relative paths in argv (containing a slash, e.g. `./fake_worker.py`) resolve against the config's dir;
    bare names such as `node` stay for PATH lookup."""
    return [str((ctx.base / a).resolve()) if ("/" in a and not a.startswith("/") and not a.startswith("-")) else a
            for a in argv]


def _restart(ctx: _Ctx, raw: Any) -> RestartSettings:
    d = _mapping(ctx, "restart", raw, _names(RestartSettings))
    out: dict[str, Any] = _backoff(ctx, "restart", d, ("stable_after",))
    if d.get("max_attempts") is not None:
        out["max_attempts"] = _int(ctx, "restart.max_attempts", d["max_attempts"], lo=1)
    r = RestartSettings(**out)
    if r.max_delay < r.initial_delay:
        raise ctx.fail("restart.max_delay", f"a number >= initial_delay ({r.initial_delay})", r.max_delay)
    return r


def _tenants(ctx: _Ctx, raw: Any) -> TenantsSettings:
    d = _mapping(ctx, "tenants", raw, _names(TenantsSettings))
    boot = d.get("boot") or []
    if not isinstance(boot, list):
        raise ctx.fail("tenants.boot", "a list of tenant ids", boot)
    ids: list[str] = []
    for i, t in enumerate(boot):
        if isinstance(t, int) and not isinstance(t, bool):
            t = str(t)  # `- 1` in YAML is the seed's tenant "1"
        if not is_tenant_id(t):
            raise ctx.fail(f"tenants.boot[{i}]", f"a tenant id matching {TENANT_ID_PATTERN}", t)
        if t not in ids:
            ids.append(t)
    return TenantsSettings(boot=tuple(ids))


def _limits(ctx: _Ctx, raw: Any) -> LimitsSettings:
    d = _mapping(ctx, "limits", raw, _names(LimitsSettings))
    out = {name: _int(ctx, f"limits.{name}", d[name], lo=0 if name == "max_standbys" else 1)
           for name in _names(LimitsSettings) if name in d}
    return LimitsSettings(**out)


def _logging(ctx: _Ctx, raw: Any) -> LoggingSettings:
    d = _mapping(ctx, "logging", raw, _names(LoggingSettings))
    out: dict[str, Any] = {}
    if "format" in d:
        out["format"] = _choice(ctx, "logging.format", d["format"], ("auto", "json", "console"))
    if "level" in d:
        lvl = d["level"].lower() if isinstance(d["level"], str) else d["level"]
        out["level"] = _choice(ctx, "logging.level", lvl, LOG_LEVELS)
    return LoggingSettings(**out)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the API on this machine: the one condition under which no secret is needed
    (checked here for config files and again by the runner for Settings built in code)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
