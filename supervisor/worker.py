"""One worker process: spawn in its own session with the inherited lock fd, read its stdout/stderr, send commands,
watch its liveness, stop it (TERM group, grace, KILL group) and always await it.

Honcho style: the process only *posts* what happened (`on_event(Event)`); the tenant decides what it means.
`run()` is the one owner of the reader/watchdog tasks and of the child; it returns how the process ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from supervisor import protocol, spawn_fence
from supervisor.childwatch import HeartbeatWatch, install_child_watcher
from supervisor.errors import NotRunning, WorkerCommandFailed, WorkerTimeout
from supervisor.worker_io import StderrForwarder, worker_env
from supervisor.settings import WorkerSettings
from supervisor.storage import make_private_dir

log = structlog.get_logger("supervisor.worker")

_PROTOCOL_LOG_FIRST = 10  # protocol errors logged one by one; after that only at powers of two (see _protocol_error)


@dataclass(frozen=True)
class ExitInfo:
    returncode: int | None
    heartbeat_timeout: bool  # the watchdog killed it
    stopped: bool  # the daemon asked it to stop


class WorkerProcess:
    def __init__(self, tenant: str, settings: WorkerSettings, auth_dir: Path, lock_fd: int,
                 on_event: Callable[[protocol.Event], None], *,
                 on_invalid_line: Callable[[int], None] | None = None, standby: bool = False) -> None:
        self.tenant = tenant
        self.standby = standby
        self.settings = settings
        self.auth_dir = auth_dir
        self.lock_fd = lock_fd
        self.on_event = on_event
        self.on_invalid_line = on_invalid_line  # called with a count: batched once per loop turn, not per line
        self._invalid_unreported = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.protocol_errors = 0
        self._protocol_logged = 0  # protocol_errors at the last logged one: the next log says how many it skipped
        self._stderr = StderrForwarder(tenant)
        self._last_line = time.monotonic()
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._heartbeat_killed = False
        self._stdout_closed: asyncio.Future[None] | None = None  # resolved by _StdoutProtocol at EOF
        self._stdout_transport: asyncio.ReadTransport | None = None
        self._expired = asyncio.Event()  # set by the loop's HeartbeatWatch when no line came for heartbeat_timeout
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
        make_private_dir(self.auth_dir)  # 0700 whatever the umask: it holds the session's private keys
        install_child_watcher()  # children's exits via pidfds in the loop, not one waitpid thread per worker
        # stdout is our own pipe, read by _StdoutProtocol straight from the loop's reader callback: asyncio's
        # subprocess pipes would cost two extra loop turns per line (a call_soon to the subprocess protocol, then
        # a task wake-up of the StreamReader's reader), i.e. 3 wake-ups per heartbeat per worker.
        out_r, out_w = os.pipe()  # both non-inheritable; the child gets out_w as its fd 1 only
        lease = spawn_fence.lease_source  # cluster mode: dies with the daemon, first lease at once (spawn_fence.py)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.settings.command,
                stdin=asyncio.subprocess.PIPE, stdout=out_w, stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # own group: stop signals reach its children, terminal signals do not
                pass_fds=(self.lock_fd,),  # the same open file description: the flock lives as long as the worker
                env=worker_env(self.settings, self.tenant, self.auth_dir, self.lock_fd, standby=self.standby),
                preexec_fn=spawn_fence.die_with_parent() if lease is not None else None,
            )
        except BaseException:
            os.close(out_r)
            raise
        finally:
            os.close(out_w)  # the child's copy is the only writer left: its exit is our EOF
        if lease is not None:  # buffered in the stdin pipe: the first command the worker reads
            self.notify("lease", validUntil=lease())
        loop = asyncio.get_running_loop()
        self._stdout_closed = loop.create_future()
        try:
            transport, _ = await loop.connect_read_pipe(lambda: _StdoutProtocol(self),
                                                        os.fdopen(out_r, "rb", buffering=0))
        except BaseException:  # never leave a spawned worker that nobody reads
            await self._terminate(grace=0.0)
            raise
        # Read at most one framing chunk (64 KiB, a pipe's default capacity) per loop turn: a flooding worker gets
        # a fair share of the loop, not all of it. (16 KiB reads made a 2 MB junk flood 4x slower: more turns and
        # context switches with the writer, for no better neighbour latency.)
        transport.max_size = protocol.READ_CHUNK  # type: ignore[attr-defined]
        self._stdout_transport = transport
        self._last_line = time.monotonic()
        log.info("worker.spawned", tenant=self.tenant, worker_pid=self.proc.pid, standby=self.standby)
        return self.proc.pid

    async def run(self) -> ExitInfo:
        """Read until the process is gone; owns (creates and awaits) every task that touches the process."""
        assert self.proc is not None
        assert self._stdout_closed is not None and self._stdout_transport is not None
        tasks = [self._stdout_closed, asyncio.create_task(self._read_stderr())]
        watch = HeartbeatWatch.for_running_loop()
        watch.add(self, self._expired.set)
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await asyncio.gather(*tasks)
            rc = await self.proc.wait()
        finally:
            watch.discard(self)
            watchdog.cancel()
            self._stdout_transport.close()  # no-op after EOF; on cancellation it stops reading (and closes the fd)
            for t in tasks:
                t.cancel()
            await asyncio.gather(watchdog, *tasks, return_exceptions=True)
            if self.proc.returncode is None:  # cancelled while the child still runs: never leave it behind
                await self._terminate(grace=0.0)
            self._report_invalid()  # exact count by the time run() returns
            self._exited.set()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(NotRunning(f"worker of {self.tenant} exited"))
            self._pending.clear()
        log.info("worker.exited", tenant=self.tenant, worker_pid=self.proc.pid, returncode=rc,
                 heartbeat_timeout=self._heartbeat_killed, protocol_errors=self.protocol_errors,
                 log_suppressed=self._stderr.suppressed)
        return ExitInfo(rc, self._heartbeat_killed, self._stopping)

    def _on_stdout_line(self, line: bytes | protocol._TooLong) -> None:
        self._last_line = time.monotonic()
        if line is protocol.TOO_LONG:
            self._protocol_error("too_long", f"line over {protocol.MAX_LINE_BYTES} bytes dropped")
            return
        assert isinstance(line, bytes)
        try:
            event = protocol.parse_line(line)
        except protocol.ProtocolError as exc:
            self._protocol_error(exc.kind, str(exc))
            return
        if event.type == "reply":
            self._resolve(event)
        try:
            self.on_event(event)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not stop this worker's stdout being read
            log.error("worker.event_failed", tenant=self.tenant, type=event.type, error=type(exc).__name__,
                      exc_info=True)

    def _protocol_error(self, kind: str, message: str) -> None:
        """Every bad line is counted (metrics); only a few are logged. One warning per line made a junk flood cost
        the daemon ~100 us of log rendering per line (132,000 lines: 13 s, neighbours' API stalled for seconds)."""
        self.protocol_errors += 1
        if self.on_invalid_line is not None:
            # A labelled Prometheus inc() costs about as much as parsing the junk line: report once per chunk
            # (read_lines yields to the loop after each one, so the call_soon runs then), still exact.
            if not self._invalid_unreported:
                asyncio.get_running_loop().call_soon(self._report_invalid)
            self._invalid_unreported += 1
        n = self.protocol_errors
        if n > _PROTOCOL_LOG_FIRST and n & (n - 1):  # the first few, then the 16th, 32nd, 64th, ...
            return
        suppressed = n - 1 - self._protocol_logged
        self._protocol_logged = n
        log.warning("worker.protocol_error", tenant=self.tenant, kind=kind, message=message, count=n,
                    suppressed=suppressed)

    def _report_invalid(self) -> None:
        n, self._invalid_unreported = self._invalid_unreported, 0
        if n and self.on_invalid_line is not None:
            self.on_invalid_line(n)

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in protocol.read_lines(self.proc.stderr, limit=64 * 1024):
            self._last_line = time.monotonic()  # any sign of life counts for the watchdog
            if line is protocol.TOO_LONG or not line.strip():
                continue
            assert isinstance(line, bytes)
            self._stderr.forward(line.decode("utf-8", "replace"))

    def deadline(self) -> float:
        """time.monotonic() by which the next line must arrive (read by the loop's HeartbeatWatch)."""
        return self._last_line + self.settings.heartbeat_timeout

    async def _watchdog(self) -> None:
        # No timer of its own: HeartbeatWatch (one timer for all workers) sets _expired once the deadline passed.
        await self._expired.wait()
        self._heartbeat_killed = True
        log.warning("worker.heartbeat_timeout", tenant=self.tenant, worker_pid=self.pid,
                    timeout=self.settings.heartbeat_timeout)
        await self._terminate(self.settings.stop_grace)

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


class _StdoutProtocol(asyncio.Protocol):
    """The worker's stdout: framed and dispatched synchronously in the loop's reader callback."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.splitter = protocol.LineSplitter()

    def data_received(self, data: bytes) -> None:
        for line in self.splitter.feed(data):
            self.worker._on_stdout_line(line)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        for line in self.splitter.close():
            self.worker._on_stdout_line(line)
        fut = self.worker._stdout_closed
        if fut is not None and not fut.done():
            fut.set_result(None)
