"""`run_daemon()`: the one owner of the daemon's tasks, signals and shutdown order (uvicorn style: signal handlers
only set events; this function awaits every task it creates).

Start-up:  notifier from $NOTIFY_SOCKET (removed from the env before any worker is spawned) -> webhook forwarder
           (so boot tenants' messages are spooled) -> API listening -> watchdog + STATUS tasks -> boot tenants
           -> READY=1 (only now: the API answers and every boot tenant has its worker or its error).
SIGHUP:    RELOADING=1 -> re-read the config file -> apply the diff (supervisor/reload.py) -> READY=1. An invalid
           file is logged (`config.reload_failed`) and the old config keeps running.
Shutdown:  SIGTERM/SIGINT -> STOPPING=1 -> SSE streams end -> API closed (no new calls) -> all workers stopped in
           parallel within the grace (a second signal kills them at once) -> pending spool writes finished ->
           webhook forwarder closed (after the workers: their last messages are spooled) -> watchdog stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import signal
from typing import Any

import structlog

from .config import load_settings
from .daemon import Supervisor
from .errors import ConfigError
from .notify import Notifier, run_watchdog, status_summary
from .reload import apply_reload
from .settings import Settings

log = structlog.get_logger("supervisor.daemon")
STATUS_MIN_INTERVAL = 1.0  # at most one STATUS= per second: a boot of 500 tenants is not 2000 datagrams


async def run_daemon(settings: Settings, *, shutdown_event: asyncio.Event | None = None,
                     supervisor: Supervisor | None = None, notifier: Notifier | None = None) -> None:
    if settings.api.secret is None and not _is_loopback(settings.api.host):
        raise ConfigError(f"refusing to bind {settings.api.host} without an API secret")
    notifier = notifier if notifier is not None else Notifier.from_env(unset=True)
    loop = asyncio.get_running_loop()
    stop = shutdown_event or asyncio.Event()
    force, reload_requested, background_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def on_signal(signame: str) -> None:
        if stop.is_set():
            force.set()
        stop.set()
        log.info("daemon.signal", signal=signame, forced=force.is_set())

    def on_hup() -> None:
        reload_requested.set()
        log.info("daemon.signal", signal="SIGHUP", forced=False)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    sup = supervisor or Supervisor(settings)
    forwarder = _make_forwarder(sup)
    sink = MessageSink(forwarder) if forwarder is not None else None
    if sink is not None:
        sup.on_message = sink
    runner = boot = None
    background: list[asyncio.Task[Any]] = []
    try:
        if forwarder is not None:
            await forwarder.start()
        runner = await _start_api(sup)
        log.info("daemon.started", pid=os.getpid(), host=settings.api.host, port=settings.api.port,
                 api=True, storage=str(settings.storage.root))
        background = [asyncio.create_task(run_watchdog(notifier, background_stop), name="watchdog"),
                      asyncio.create_task(_status_loop(sup, notifier, background_stop), name="notify-status")]
        boot = asyncio.create_task(sup.boot(), name="boot")
        await _wait_any(stop, boot)
        if not stop.is_set():
            notifier.ready(_summary(sup))
            log.info("daemon.ready", tenants=len(sup.tenants), notify=notifier.enabled)
        while not stop.is_set():
            await _wait_any(stop, reload_requested)
            if reload_requested.is_set() and not stop.is_set():
                reload_requested.clear()
                await _reload(sup, notifier)
    finally:
        notifier.stopping("stopping")
        log.info("daemon.stopping", tenants=len(sup.tenants))
        sup.events.close()  # open SSE streams end now, so closing the API below does not wait for them
        if runner is not None:
            await runner.cleanup()  # stop accepting first: no start can race the shutdown
        if boot is not None:
            boot.cancel()  # starts still in flight are awaited by shutdown()
            await asyncio.gather(boot, return_exceptions=True)
        await sup.shutdown(force=force)
        if sink is not None:
            await sink.drain()
        if forwarder is not None:
            await forwarder.aclose()
        background_stop.set()
        await asyncio.gather(*background, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        notifier.close()
        log.info("daemon.stopped", pid=os.getpid())


async def _reload(sup: Supervisor, notifier: Notifier) -> None:
    notifier.reloading("reloading configuration")
    source = sup.settings.source
    try:
        if source is None:
            raise ConfigError("the daemon was not started from a config file; nothing to reload")
        new = load_settings(source)
    except ConfigError as exc:
        log.error("config.reload_failed", file=str(source), message=str(exc))
        notifier.ready(_summary(sup) + " (last reload failed: see config.reload_failed)")
        return
    plan = await apply_reload(sup, new)
    log.info("config.reloaded", file=str(source), changed=plan.changed, started=plan.start, stopped=plan.stop,
             restarted=plan.restart, not_applied=plan.not_applied)
    notifier.ready(_summary(sup))


def _summary(sup: Supervisor) -> str:
    return status_summary(t.state for t in sup.tenants.values())


async def _status_loop(sup: Supervisor, notifier: Notifier, stop: asyncio.Event) -> None:
    """STATUS=<summary> after state changes, throttled: `systemctl status` shows the tenants at a glance."""
    if not notifier.enabled:
        return
    while not stop.is_set():
        await _wait_any(stop, sup.state_changed)
        if stop.is_set():
            return
        sup.state_changed.clear()
        notifier.status(_summary(sup))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STATUS_MIN_INTERVAL)


async def _wait_any(*waitables: asyncio.Event | asyncio.Task[Any]) -> None:
    tasks = [w if isinstance(w, asyncio.Task) else asyncio.create_task(w.wait()) for w in waitables]
    own = [t for t, w in zip(tasks, waitables) if not isinstance(w, asyncio.Task)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in own:
            t.cancel()
        await asyncio.gather(*own, return_exceptions=True)


class MessageSink:
    """Tenant.on_message is synchronous; spooling is not. One task per message, created in arrival order: each runs
    submit() up to its spool write before yielding, so the spool order is the arrival order."""

    def __init__(self, forwarder: Any) -> None:
        self.forwarder = forwarder
        self.pending: set[asyncio.Task[None]] = set()

    def __call__(self, tid: str, payload: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._submit(tid, payload))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _submit(self, tid: str, payload: dict[str, Any]) -> None:
        from .spool import SpoolFull

        try:
            # docs/webhook.md's payload is the whole event, type included (Event.fields leaves `type` out)
            await self.forwarder.submit(tid, {"type": "message", **payload})
        except SpoolFull:
            pass  # already logged (webhook.spool_full) and counted by the forwarder
        except Exception as exc:  # noqa: BLE001 - e.g. WebhookClosed during shutdown, a disk error
            log.error("webhook.submit_failed", tenant=tid, error=type(exc).__name__, message=str(exc)[:300])

    async def drain(self) -> None:
        while self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)


def _make_forwarder(sup: Supervisor) -> Any:
    cfg = sup.settings.webhook
    if cfg.url is None:
        return None
    from .webhook import WebhookForwarder, WebhookSettings  # aiohttp client: only loaded when forwarding is on

    m = sup.metrics
    return WebhookForwarder(WebhookSettings(**dataclasses.asdict(cfg)), storage_root=sup.settings.storage.root,
                            on_depth=m.webhook_depth if m is not None else None,
                            on_result=m.webhook_result if m is not None else None)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


async def _start_api(sup: Supervisor) -> Any:
    from aiohttp import web

    from .api import make_app

    runner = web.AppRunner(make_app(sup), shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, sup.settings.api.host, sup.settings.api.port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
