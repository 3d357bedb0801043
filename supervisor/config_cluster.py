"""The `cluster:` section of the config (docs/cluster.md): absent = single host (flock), present = the postgres
backend. Validated as strictly as the rest of config.py; the DSN (it may hold a password) never appears in an error."""

from __future__ import annotations

import os
import re
import socket
from typing import Any

from .errors import ConfigError
from .settings import ClusterSettings

NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
URL_RE = re.compile(r"^https?://[^\s/]+", re.IGNORECASE)
BACKENDS = ("postgres",)
_FLOATS = ("ping_interval", "fence_after", "release_after", "claim_interval", "idle_in_transaction_timeout",
           "statement_timeout")
_KEYS = ("backend", "dsn", "dsn_env", "dsn_file", "node_id", "advertise_url", "max_tenants", "claim_batch", *_FLOATS)


def default_node_id() -> str:
    host = socket.gethostname().split(".")[0] or "node"
    return host if NODE_ID_RE.match(host) else "node"


def cluster_config(ctx: Any, raw: Any) -> ClusterSettings | None:
    from .config_types import _choice, _int, _mapping, _path, _pos_float, _str

    if raw is None:
        return None
    d = _mapping(ctx, "cluster", raw, _KEYS)
    if "backend" not in d:
        raise ConfigError(f"{ctx.source}: cluster.backend: required (postgres)", key="cluster.backend", file=ctx.source)
    out: dict[str, Any] = {"backend": _choice(ctx, "cluster.backend", d["backend"], BACKENDS)}
    out["dsn"] = _dsn(ctx, d, _str, _path)
    node = d.get("node_id")
    if node is None:
        out["node_id"] = default_node_id()
    else:
        if not isinstance(node, str) or not NODE_ID_RE.match(node):
            raise ctx.fail("cluster.node_id", f"a node id matching {NODE_ID_RE.pattern}", node)
        out["node_id"] = node
    if d.get("advertise_url") is not None:
        url = _str(ctx, "cluster.advertise_url", d["advertise_url"])
        if not URL_RE.match(url):
            raise ctx.fail("cluster.advertise_url", "an http:// or https:// URL", url)
        out["advertise_url"] = url
    if "max_tenants" in d:
        out["max_tenants"] = _int(ctx, "cluster.max_tenants", d["max_tenants"], lo=1)
    if "claim_batch" in d:
        out["claim_batch"] = _int(ctx, "cluster.claim_batch", d["claim_batch"], lo=1)
    for name in _FLOATS:
        if name in d:
            out[name] = _pos_float(ctx, f"cluster.{name}", d[name])
    cs = ClusterSettings(**out)
    if cs.fence_after * 2 > cs.release_after:
        raise ctx.fail("cluster.fence_after", f"a number <= release_after / 2 ({cs.release_after / 2:g}): the node "
                       "must fence itself well before the server releases its lock", cs.fence_after)
    if cs.ping_interval * 2 > cs.fence_after:
        raise ctx.fail("cluster.ping_interval", f"a number <= fence_after / 2 ({cs.fence_after / 2:g})",
                       cs.ping_interval)
    return cs


def _dsn(ctx: Any, d: dict[str, Any], _str: Any, _path: Any) -> str:
    """Precedence like api.secret: `dsn`, then the file at `dsn_file`, then the variable named by `dsn_env`."""
    if d.get("dsn") is not None:
        if not isinstance(d["dsn"], str) or not d["dsn"] or "\x00" in d["dsn"]:
            raise ConfigError(f"{ctx.source}: cluster.dsn: expected a non-empty string", key="cluster.dsn",
                              file=ctx.source)
        return d["dsn"]
    if d.get("dsn_file") is not None:
        p = _path(ctx, "cluster.dsn_file", d["dsn_file"])
        try:
            value = p.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{ctx.source}: cluster.dsn_file: cannot read {str(p)!r}: "
                              f"{getattr(exc, 'strerror', None) or exc}", key="cluster.dsn_file",
                              file=ctx.source) from None
        if not value:
            raise ConfigError(f"{ctx.source}: cluster.dsn_file: {str(p)!r} is empty", key="cluster.dsn_file",
                              file=ctx.source)
        return value
    env = _str(ctx, "cluster.dsn_env", d.get("dsn_env", "BSUP_CLUSTER_DSN"))
    value = os.environ.get(env)
    if not value:
        raise ConfigError(f"{ctx.source}: cluster: no DSN (set cluster.dsn, cluster.dsn_file or the environment "
                          f"variable {env})", key="cluster.dsn", file=ctx.source)
    return value
