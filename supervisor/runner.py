"""`run_daemon()`: one run of the daemon, as `Daemon.run()` = startup -> main_loop -> shutdown (uvicorn's
Server.serve shape). Signal handlers only set events; the Daemon awaits every task it creates.

startup:   notifier from $NOTIFY_SOCKET (removed from the env before any worker is spawned) -> cluster mode: node lock
           and claims (supervisor/cluster_node.py) -> webhook forwarder
           (so boot tenants' messages are spooled) -> cluster mode: the proxy to the other nodes
           (supervisor/api_forward.py) -> API listening -> watchdog + STATUS tasks -> boot tenants
           -> READY=1 (only now: the API answers and every boot tenant has its worker or its error).
main_loop: SIGHUP: RELOADING=1 -> re-read the config file -> apply the diff (supervisor/reload.py) -> READY=1. An
           invalid file is logged (`config.reload_failed`) and the old config keeps running.
shutdown:  (SIGTERM/SIGINT, or a failed start-up) STOPPING=1 -> SSE streams (also proxied ones) end -> API closed (no new calls) ->
           cluster mode: drain (tenants handed to the other nodes) -> all workers stopped in parallel within the
           grace (a second signal kills them at once) -> pending spool writes
           finished -> webhook forwarder closed (after the workers: their last messages are spooled) -> watchdog stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import TYPE_CHECKING, Any

import structlog

from .api import make_app, start_api
from .config import is_loopback, load_settings
from .daemon import Supervisor
from .errors import ConfigError
from .notify import Notifier, run_watchdog, status_summary
from .outbox import OutboxLocked
from .outbox_dispatch import OutboxDispatcher, make_outbox
from .reload import apply_reload
from .settings import Settings
from .webhook_sink import MessageSink, make_forwarder

if TYPE_CHECKING:
    from aiohttp import web

    from .webhook import WebhookForwarder

log = structlog.get_logger("supervisor.daemon")
STATUS_MIN_INTERVAL = 1.0  # at most one STATUS= per second: a boot of 500 tenants is not 2000 datagrams
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


async def run_daemon(settings: Settings, *, shutdown_event: asyncio.Event | None = None,
                     supervisor: Supervisor | None = None, notifier: Notifier | None = None) -> None:
    """Run until SIGTERM/SIGINT or `shutdown_event`; ConfigError before anything starts when the API would be
    reachable from other machines without a secret."""
    await Daemon(settings, shutdown_event=shutdown_event, supervisor=supervisor, notifier=notifier).run()


class Daemon:
    def __init__(self, settings: Settings, *, shutdown_event: asyncio.Event | None = None,
                 supervisor: Supervisor | None = None, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.sup = supervisor
        self.notifier = notifier
        self.should_exit = shutdown_event or asyncio.Event()
        self.force_exit = asyncio.Event()  # a second SIGTERM/SIGINT: workers are killed without their grace
        self.reload_requested = asyncio.Event()
        self._background_stop = asyncio.Event()
        self._background: list[asyncio.Task[Any]] = []
        self._api: web.AppRunner | None = None  # once listening
        self._boot: asyncio.Task[None] | None = None
        self._forwarder: WebhookForwarder | None = None
        self._sink: MessageSink | None = None
        self._outbox: OutboxDispatcher | None = None
        self._cluster: Any = None  # cluster mode: supervisor/cluster_node.py's ClusterNode, once its lock is held
        self._forward: Any = None  # cluster mode: the API's proxy to other nodes and its ClientSession

    async def run(self) -> None:
        api = self.settings.api
        if api.secret is None and not is_loopback(api.host):
            raise ConfigError(f"refusing to bind {api.host} without an API secret")
        if self.notifier is None:
            self.notifier = Notifier.from_env(unset=True)
        self._install_signal_handlers()
        try:
            await self.startup()
            await self.main_loop()
        finally:
            await self.shutdown()

    # -- signals: handlers only set events ----------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_exit_signal, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _on_exit_signal(self, signame: str) -> None:
        if self.should_exit.is_set():
            self.force_exit.set()
        self.should_exit.set()
        log.info("daemon.signal", signal=signame, forced=self.force_exit.is_set())

    def _on_hup(self) -> None:
        self.reload_requested.set()
        log.info("daemon.signal", signal="SIGHUP", forced=False)

    # -- the three steps ----------------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Returns once every boot tenant has its worker or its error (then READY=1), or when asked to exit."""
        s, notifier = self.settings, self.notifier
        assert notifier is not None
        sup = self.sup = self.sup or Supervisor(s)
        if s.cluster is not None:  # before the API: every answer in cluster mode needs the store
            from .cluster_node import ClusterNode  # imports psycopg: never in the single-host mode

            self._cluster = sup.cluster = ClusterNode(sup, s)
            await self._cluster.start()
        self._forwarder = make_forwarder(s.webhook, s.storage.root, sup.metrics, self._cluster)
        if self._forwarder is not None:
            self._sink = sup.on_message = MessageSink(self._forwarder, sup.worker_command)
            await self._forwarder.start(hold=True)  # released by the outbox's start (_start_outbox)
        self._outbox = await _start_outbox(s, sup, self._forwarder)  # before the boot: tenants resume sending
        app = make_app(sup, s.api, events=sup.events, metrics=sup.metrics, webhook=self._forwarder,
                       outbox=self._outbox)
        if self._cluster is not None:  # requests for another node's tenants go to it (supervisor/api_forward.py)
            from .api_forward import Forwarder, install

            self._forward = Forwarder(self._cluster, s)
            await self._forward.start()
            install(app, self._forward)
        self._api, port = await start_api(app, s.api.host, s.api.port)
        log.info("daemon.started", pid=os.getpid(), host=s.api.host, port=port, api=True, storage=str(s.storage.root))
        self._background = [
            asyncio.create_task(run_watchdog(notifier, self._background_stop), name="watchdog"),
            asyncio.create_task(_status_loop(sup, notifier, self._background_stop), name="notify-status")]
        self._boot = asyncio.create_task(sup.boot(), name="boot")
        await _wait_any(self.should_exit, self._boot)
        if not self.should_exit.is_set():
            notifier.ready(_summary(sup))
            log.info("daemon.ready", tenants=len(sup.tenants), notify=notifier.enabled)

    async def main_loop(self) -> None:
        while not self.should_exit.is_set():
            await _wait_any(self.should_exit, self.reload_requested)
            if self.reload_requested.is_set() and not self.should_exit.is_set():
                self.reload_requested.clear()
                assert self.sup is not None and self.notifier is not None  # set by run() and startup()
                await _reload(self.sup, self.notifier)

    async def shutdown(self) -> None:
        """Undo whatever startup() got to, in order; also after a start-up that failed half-way."""
        sup, notifier = self.sup, self.notifier
        assert notifier is not None
        notifier.stopping("stopping")
        log.info("daemon.stopping", tenants=len(sup.tenants) if sup else 0)
        if sup is not None:
            sup.events.close()  # open SSE streams end now, so closing the API below does not wait for them
        if self._forward is not None:
            self._forward.end_streams()  # proxied ones too
        if self._api is not None:
            await self._api.cleanup()  # stop accepting first: no start can race the shutdown
        if self._forward is not None:
            await self._forward.close()
        if self._boot is not None:
            self._boot.cancel()  # starts still in flight are awaited by shutdown()
            await asyncio.gather(self._boot, return_exceptions=True)
        if self._cluster is not None:
            await self._cluster.close()  # drain: each worker stopped, then its row released for another node
        if sup is not None:
            await sup.shutdown(force=self.force_exit)
        if self._outbox is not None:
            await self._outbox.aclose()  # after the workers (their last statuses), before the forwarder
        if self._sink is not None:
            await self._sink.drain()
        if self._forwarder is not None:
            await self._forwarder.aclose()
        self._background_stop.set()
        await asyncio.gather(*self._background, return_exceptions=True)
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
        notifier.close()
        log.info("daemon.stopped", pid=os.getpid())


async def _start_outbox(s: Settings, sup: Supervisor, forwarder: WebhookForwarder | None) -> OutboxDispatcher | None:
    """The send API's outbox; None when another daemon on this storage owns it (that one sends: two would send
    twice). This daemon still serves its own tenants then, as without the webhook; its send API answers 503."""
    box = make_outbox(s, sup, forwarder)
    try:
        await box.start()
    except OutboxLocked as exc:
        log.error("outbox.locked", message=exc.message)
        await box.aclose()
        return None
    finally:
        if forwarder is not None:  # started with hold=True: delivery begins after the outbox's first copy
            forwarder.release()
    sup.observers.add(box)
    return box


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
