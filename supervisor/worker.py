"""One worker process: spawn in its own session with the inherited lock fd, read its stdout/stderr, send commands,
watch its liveness, stop it (TERM group, grace, KILL group) and always await it.

Honcho style: the process only *posts* what happened (`on_event(Event)`); the tenant decides what it means.
`run()` is the one owner of the reader/watchdog tasks and of the child; it returns how the process ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from supervisor import protocol
from supervisor.errors import NotRunning, WorkerCommandFailed, WorkerTimeout
from supervisor.settings import WorkerSettings

log = structlog.get_logger("supervisor.worker")

_PINO_LEVELS = {10: "debug", 20: "debug", 30: "info", 40: "warning", 50: "error", 60: "critical"}
_MAX_LOG_MSG = 500  # worker log lines are truncated: a runaway worker must not flood the daemon's log


@dataclass(frozen=True)
class ExitInfo:
    returncode: int | None
    heartbeat_timeout: bool  # the watchdog killed it
    stopped: bool  # the daemon asked it to stop


def worker_env(settings: WorkerSettings, tenant: str, auth_dir: Path, lock_fd: int) -> dict[str, str]:
    env = dict(os.environ)
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
    if settings.wa_url:
        env["BSUP_WA_URL"] = settings.wa_url
    if settings.socket_options:
        env["BSUP_SOCKET_OPTIONS"] = json.dumps(settings.socket_options)
    env.update(settings.env)
    return env


class WorkerProcess:
    def __init__(self, tenant: str, settings: WorkerSettings, auth_dir: Path, lock_fd: int,
                 on_event: Callable[[protocol.Event], None], *,
                 on_invalid_line: Callable[[], None] | None = None) -> None:
        self.tenant = tenant
        self.settings = settings
        self.auth_dir = auth_dir
        self.lock_fd = lock_fd
        self.on_event = on_event
        self.on_invalid_line = on_invalid_line
        self.proc: asyncio.subprocess.Process | None = None
        self.protocol_errors = 0
        self._last_line = time.monotonic()
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._heartbeat_killed = False
        self._stopping = False
        self._exited = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and not self._exited.is_set()

    async def spawn(self) -> int:
        """Start the process (raises OSError if the command cannot run). Returns the pid."""
        self.auth_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.proc = await asyncio.create_subprocess_exec(
            *self.settings.command,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # own group: stop signals reach its children, terminal signals do not reach it
            pass_fds=(self.lock_fd,),  # the same open file description: the flock lives as long as the worker
            env=worker_env(self.settings, self.tenant, self.auth_dir, self.lock_fd),
        )
        self._last_line = time.monotonic()
        log.info("worker.spawned", tenant=self.tenant, worker_pid=self.proc.pid)
        return self.proc.pid

    async def run(self) -> ExitInfo:
        """Read until the process is gone; owns (creates and awaits) every task that touches the process."""
        assert self.proc is not None
        tasks = [asyncio.create_task(self._read_stdout()), asyncio.create_task(self._read_stderr())]
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await asyncio.gather(*tasks)
            rc = await self.proc.wait()
        finally:
            watchdog.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(watchdog, *tasks, return_exceptions=True)
            if self.proc.returncode is None:  # cancelled while the child still runs: never leave it behind
                await self._terminate(grace=0.0)
            self._exited.set()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(NotRunning(f"worker of {self.tenant} exited"))
            self._pending.clear()
        log.info("worker.exited", tenant=self.tenant, worker_pid=self.proc.pid, returncode=rc,
                 heartbeat_timeout=self._heartbeat_killed, protocol_errors=self.protocol_errors)
        return ExitInfo(rc, self._heartbeat_killed, self._stopping)

    async def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in protocol.read_lines(self.proc.stdout):
            self._last_line = time.monotonic()
            if line is protocol.TOO_LONG:
                self._protocol_error("too_long", f"line over {protocol.MAX_LINE_BYTES} bytes dropped")
                continue
            assert isinstance(line, bytes)
            try:
                event = protocol.parse_line(line)
            except protocol.ProtocolError as exc:
                self._protocol_error(exc.kind, str(exc))
                continue
            if event.type == "reply":
                self._resolve(event)
            self.on_event(event)

    def _protocol_error(self, kind: str, message: str) -> None:
        self.protocol_errors += 1
        log.warning("worker.protocol_error", tenant=self.tenant, kind=kind, message=message,
                    count=self.protocol_errors)
        if self.on_invalid_line is not None:
            self.on_invalid_line()

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in protocol.read_lines(self.proc.stderr, limit=64 * 1024):
            self._last_line = time.monotonic()  # any sign of life counts for the watchdog
            if line is protocol.TOO_LONG or not line.strip():
                continue
            assert isinstance(line, bytes)
            text = line.decode("utf-8", "replace")
            level, msg = "info", text
            with contextlib.suppress(ValueError):
                obj = json.loads(text)
                if isinstance(obj, dict):  # pino: only level and msg pass; other fields may hold creds/messages
                    level = _PINO_LEVELS.get(obj.get("level"), "info") if isinstance(obj.get("level"), int) else "info"
                    msg = str(obj.get("msg", ""))
            log.log(_level_no(level), "worker.log", tenant=self.tenant, worker_level=level, msg=msg[:_MAX_LOG_MSG])

    async def _watchdog(self) -> None:
        timeout = self.settings.heartbeat_timeout
        while True:
            remaining = self._last_line + timeout - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            self._heartbeat_killed = True
            log.warning("worker.heartbeat_timeout", tenant=self.tenant, worker_pid=self.pid, timeout=timeout)
            await self._terminate(self.settings.stop_grace)
            return

    def _resolve(self, event: protocol.Event) -> None:
        fut = self._pending.pop(event.get("id"), None)
        if fut is None or fut.done():
            return
        if event.get("ok"):
            fut.set_result(event.get("result") or {})
        else:
            fut.set_exception(WorkerCommandFailed(str(event.get("message") or "worker command failed"),
                                                  worker_error=event.get("error")))

    def _write(self, data: bytes) -> None:
        if not self.alive or self.proc is None or self.proc.stdin is None or self.proc.stdin.is_closing():
            raise NotRunning(f"worker of {self.tenant} is not running")
        self.proc.stdin.write(data)

    def notify(self, cmd: str, **fields: Any) -> None:
        """Fire-and-forget command (no reply expected)."""
        self._write(protocol.encode_command(cmd, **fields))

    async def request(self, cmd: str, timeout: float, **fields: Any) -> dict[str, Any]:
        """Command with an id; returns the reply's result. WorkerTimeout / WorkerCommandFailed / NotRunning."""
        cid = str(next(self._ids))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            self._write(protocol.encode_command(cmd, id=cid, **fields))
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise WorkerTimeout(f"worker of {self.tenant} did not answer {cmd} within {timeout}s") from None
        finally:
            self._pending.pop(cid, None)

    def request_stop(self) -> None:
        """Synchronous nudge (from an event handler): stop command, stdin EOF, SIGTERM to the group. The watchdog
        still kills a worker that ignores all three."""
        self._stopping = True
        with contextlib.suppress(NotRunning, ConnectionError, RuntimeError):
            self.notify("stop")
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        self._signal_group(signal.SIGTERM)

    async def stop(self, grace: float | None = None) -> None:
        """Ask nicely (stop command, stdin EOF, SIGTERM to the group), then SIGKILL the group after the grace.
        Returns when the process has exited (run() reaps it)."""
        self._stopping = True
        with contextlib.suppress(NotRunning, ConnectionError, RuntimeError):
            self.notify("stop")
        await self._terminate(self.settings.stop_grace if grace is None else grace)

    async def _terminate(self, grace: float) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        self._signal_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), grace) if grace > 0 else None
        except TimeoutError:
            pass
        if proc.returncode is None:
            log.warning("worker.kill", tenant=self.tenant, worker_pid=proc.pid, grace=grace)
            self._signal_group(signal.SIGKILL)
            await proc.wait()

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        # Only while the leader is unreaped is its pid (= pgid) guaranteed not to be reused.
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)


def _level_no(name: str) -> int:
    import logging

    return getattr(logging, name.upper(), logging.INFO)
