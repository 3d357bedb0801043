"""SIGHUP: re-read the config file and apply it as a diff (docs/design.md, "Reload").

    plan = plan_reload(old, new, running)     # pure: what would change
    plan = await apply_reload(sup, new)       # does it; untouched workers keep their pid

What is applied live, and how:
- tenants.boot: tenants added to the list start, tenants removed from it stop (operator-started tenants that were
  never in the list are left alone);
- worker.*: every running tenant restarts with the new worker settings (they all share one worker section), except
  when only daemon-side fields changed (DAEMON_SIDE_WORKER_FIELDS): `max_concurrent_spawns` resizes the shared spawn
  slots at once (spawns in flight finish), `prewarm` applies from the next QR; no worker is restarted for those;
- restart.*: swapped into every tenant's restart policy in place (failure counts are kept);
- limits.*: read at each admission, so in force at once (lowering one stops nothing that runs);
- logging.*: re-configured at once.
Not applied (logged as `config.reload_not_applied`, the old values stay in force until a restart): api.*
(the listening socket and the secret of open clients), storage.* (where every lock and auth dir lives), webhook.*
(the spool is owned by the running forwarder), cluster.* (the node's lock, connections and lease are set up at start).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from .settings import Settings

log = structlog.get_logger("supervisor.reload")
RESTART_REQUIRED = ("api", "storage", "webhook", "cluster")
# worker.* fields the daemon reads for itself, never passed to a worker: changing them restarts nobody.
DAEMON_SIDE_WORKER_FIELDS = frozenset({"max_concurrent_spawns", "prewarm"})


@dataclass
class ReloadPlan:
    start: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # top-level sections that differ
    not_applied: list[str] = field(default_factory=list)  # of those, the ones that need a daemon restart


def plan_reload(old: Settings, new: Settings, running: set[str]) -> ReloadPlan:
    sections = ("storage", "api", "worker", "restart", "tenants", "limits", "logging", "webhook", "cluster")
    changed = [s for s in sections if getattr(old, s) != getattr(new, s)]
    old_boot, new_boot = set(old.tenants.boot), set(new.tenants.boot)
    stop = sorted(old_boot - new_boot)
    restart = sorted(running - set(stop)) if _workers_change(old, new) else []
    start = sorted(new_boot - old_boot - set(restart))
    return ReloadPlan(start=start, stop=stop, restart=restart, changed=changed,
                      not_applied=[s for s in changed if s in RESTART_REQUIRED])


def _workers_change(old: Settings, new: Settings) -> bool:
    """Whether running workers would be started differently: a worker.* field other than the daemon-side ones."""
    daemon_side = {f: getattr(old.worker, f) for f in DAEMON_SIDE_WORKER_FIELDS}
    return replace(new.worker, **daemon_side) != old.worker


def effective(old: Settings, new: Settings) -> Settings:
    """The settings the daemon runs with after the reload: sections that need a restart keep their old values."""
    kept = {s: getattr(old, s) for s in RESTART_REQUIRED}
    return replace(new, **kept)


async def apply_reload(sup: Any, new: Settings) -> ReloadPlan:
    old: Settings = sup.settings
    running = {tid for tid, t in sup.tenants.items() if t.running}
    plan = plan_reload(old, new, running)
    for section in plan.not_applied:
        log.warning("config.reload_not_applied", section=section, reason="needs a daemon restart")
    eff = effective(old, new)
    sup.settings = eff
    for tenant in sup.tenants.values():
        # Read at the next spawn (worker) and the next failure (restart): changing them here is enough for tenants
        # that are not restarted below.
        tenant.settings = eff
        tenant.lock.stop_grace = eff.worker.stop_grace
    sup.spawn_slots.limit = eff.worker.max_concurrent_spawns
    if "logging" in plan.changed:
        from .events import configure_logging

        configure_logging(eff.logging.format, eff.logging.level)
    log.info("config.reload_plan", changed=plan.changed, start=plan.start, stop=plan.stop, restart=plan.restart)

    async def one(op: str, tid: str) -> None:
        try:
            await getattr(sup, f"{op}_tenant")(tid)
        except Exception as exc:  # noqa: BLE001 - one tenant's failure must not abort the others' reload
            log.error("config.reload_tenant_failed", tenant=tid, op=op, error=getattr(exc, "code", type(exc).__name__),
                      message=str(exc))

    await asyncio.gather(*(one("stop", t) for t in plan.stop), *(one("restart", t) for t in plan.restart),
                         *(one("start", t) for t in plan.start))
    return plan
