"""Workers of a cluster node (supervisor/spawn_fence.py, cluster_node.py's leases, node_worker/src/lease.mjs), with
real daemon processes on a real PostgreSQL:
- a SIGSTOPped daemon cannot keep its real node worker connected: the worker's lease passes and it exits on its own
  within about fence_after; after SIGCONT the node fences, re-claims and runs the tenant again;
- a SIGKILLed daemon takes even a worker that ignores stdin EOF with it (PR_SET_PDEATHSIG);
- the fork happens on the event loop's thread (PDEATHSIG fires when the forking *thread* exits)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time

import psutil

from supervisor import spawn_fence
from supervisor.settings import WORKER_NODE_FLAGS
from supervisor.worker import WorkerProcess
from tests.cluster.procs import owners
from tests.conftest import kill_marked, live_workers
from tests.e2e.e2e_harness import WORKER
from tests.support import DaemonProcess, fake_config, free_port, http_json, settings_of, wait_for

SECRET = "s3cret-lease"
H = {"X-Internal-Secret": SECRET}
FENCE_AFTER = 4.0


def daemon(tmp_path, pg_dsn, marker, env=None, **worker) -> DaemonProcess:
    port = free_port()
    (tmp_path / "state").mkdir()
    cfg = fake_config(tmp_path / "storage", tmp_path / "state", marker, port=port, secret=SECRET, worker=worker,
                      env=env,
                      cluster={"backend": "postgres", "dsn": pg_dsn, "node_id": "a", "ping_interval": 0.5,
                               "fence_after": FENCE_AFTER, "release_after": 10, "claim_interval": 0.3})
    return DaemonProcess(tmp_path / "node-a", cfg).start(timeout=60)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # its parent (stopped) has not reaped it yet
    except psutil.NoSuchProcess:
        return True


def test_sigstopped_daemon_cannot_keep_its_worker(tmp_path, pg_dsn, marker):
    # WhatsApp that accepts and never answers: the real worker stays in `connecting` for as long as it lives
    silent = socket.create_server(("127.0.0.1", 0))
    url = f"ws://127.0.0.1:{silent.getsockname()[1]}/ws/chat"
    d = daemon(tmp_path, pg_dsn, marker, command=["node", *WORKER_NODE_FLAGS, str(WORKER), marker], wa_url=url,
               socket_options={"connectTimeoutMs": 600000}, log_level="warn")
    try:
        assert http_json("POST", d.url + "/whatsapp/t1/start", headers=H)[0] == 200
        [pid] = wait_for(lambda: list(live_workers(marker)) or None, 60, "the real worker")
        epoch = owners(pg_dsn)["t1"][1]
        # Renewals keep it alive: twice the lease after the spawn it still runs (this can only fail if the daemon
        # really missed its lease, and then it would have fenced itself too).
        time.sleep(2 * FENCE_AFTER)
        assert list(live_workers(marker)) == [pid] and owners(pg_dsn)["t1"][1] == epoch
        os.kill(d.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            wait_for(lambda: gone(pid), FENCE_AFTER + 20, "the worker of the stopped daemon exits on its own")
            took = time.monotonic() - t0
            print(f"\nworker gone {took:.2f} s after the daemon's SIGSTOP (fence_after {FENCE_AFTER} s)")
            assert psutil.Process(d.pid).status() == psutil.STATUS_STOPPED  # nobody else could have killed it
        finally:
            os.kill(d.pid, signal.SIGCONT)
        # the daemon reaps it: exit code 3 (lease passed) in its log, then fences, re-claims, and runs t1 again
        wait_for(lambda: "returncode" in d.log_path.read_text() and '"returncode": 3' in d.log_path.read_text(),
                 30, "worker.exited with returncode 3")
        [pid2] = wait_for(lambda: list(live_workers(marker)) or None, 60, "t1 running again after the fence")
        assert pid2 != pid and owners(pg_dsn)["t1"][1] > epoch
    finally:
        d.stop()
        kill_marked(marker)
        silent.close()


def test_sigkilled_daemon_takes_a_worker_that_ignores_eof(tmp_path, pg_dsn, marker):
    d = daemon(tmp_path, pg_dsn, marker, env={"BSUP_FAKE_IGNORE_EOF": "1"})  # a hung worker: stdin EOF is not enough
    try:
        assert http_json("POST", d.url + "/whatsapp/t1/start", headers=H)[0] == 200
        [pid] = wait_for(lambda: list(live_workers(marker)) or None, 60, "the worker")
        d.kill9()
        wait_for(lambda: not live_workers(marker), 20, "the worker dies with its daemon (PDEATHSIG)")
    finally:
        d.stop()
        kill_marked(marker)


async def test_workers_fork_on_the_event_loop_thread(tmp_path, fake_state, marker):
    """The preexec hook runs in the child right after fork, in the copy of the forking thread: it writes that
    thread's id, which must be the loop's (PDEATHSIG fires when the forking thread exits, e.g. a to_thread worker)."""
    seen = tmp_path / "forked-on"
    real = spawn_fence.die_with_parent

    def recording():
        inner = real()

        def preexec():
            seen.write_text(str(threading.get_ident()))
            inner()
        return preexec

    settings = settings_of(fake_config(tmp_path / "s", fake_state, marker)).worker
    spawn_fence.lease_source, spawn_fence.die_with_parent = (lambda: int(time.time() * 1000) + 60000), recording
    lock = os.open(tmp_path / "lock", os.O_CREAT | os.O_RDWR, 0o600)
    w = WorkerProcess("t1", settings, tmp_path / "auth", lock, lambda e: None)
    try:
        await w.spawn()
        run = asyncio.create_task(w.run())
        assert seen.read_text() == str(threading.get_ident())
        await w.stop(grace=2)
        await run
    finally:
        spawn_fence.lease_source, spawn_fence.die_with_parent = None, real
        os.close(lock)


def test_fence_reports_each_renewal_and_its_end_in_ms():
    from supervisor.cluster.fence import Fence

    now = [100.0]
    f = Fence(4.0, clock=lambda: now[0])
    renewals = []
    f.on_renew = lambda: renewals.append(f.valid_until_ms())
    f.reset(100.0)
    assert f.renewed(101.0) and len(renewals) == 1  # a renewal: the workers get the new end
    assert abs(renewals[0] - (time.time() + 5.0) * 1000) < 1000  # send time 101 + 4 s, clock at 100: 5 s ahead
    now[0] = 106.0
    assert not f.renewed(105.5) and len(renewals) == 1  # lapsed: no renewal, nothing sent
    assert f.valid_until_ms() <= time.time() * 1000 + 1
