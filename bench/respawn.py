"""Benchmark: worker exit -> replacement spawned, when the restart policy's delay is 0 (close 515), with the fake
worker (tests/fake_worker.py scripted `hello`, `open`, `close 515`, exit; the open resets the policy's
3-in-a-row limit on immediate 515 restarts, as a real pairing does). The daemon's own overhead.

    .venv/bin/python bench/respawn.py [--restarts 300]

Measured in-process on the real Supervisor/Tenant/WorkerProcess (no patches), from its own structured events,
timestamped with perf_counter by a structlog processor:
  overhead  = `worker.spawned` of worker n+1 - `worker.exited` of worker n   (decision + state changes + lock/pid
              file bookkeeping + fork/exec; `worker.exited` is logged once the exit has been reaped)
  restart   = `worker.hello` of n+1 - `tenant.close` of n   (what a user waits for: old worker's exit + daemon
              overhead + new worker's start-up to its first line)
Baseline in the same run: bare asyncio.create_subprocess_exec of the same fake worker, with the same environment,
to its first stdout line (hello) -- the floor any restart pays. Goal (issue 6): overhead p50 <= 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FAKE_WORKER, PYTHON, machine, pct  # noqa: E402

from supervisor.daemon import Supervisor  # noqa: E402
from supervisor.settings import ApiSettings, RestartSettings, Settings, StorageSettings, WorkerSettings  # noqa: E402
from supervisor.worker import worker_env  # noqa: E402

SCRIPT = [{"hello": {}}, {"open": "bench@s.whatsapp.net"}, {"close": 515, "reason": "restartRequired", "message": "restart required"}]
EVENTS: list[tuple[float, str]] = []


def record(_logger, _method, event_dict):
    EVENTS.append((time.perf_counter(), event_dict.get("event")))
    raise structlog.DropEvent  # nothing is rendered: the measurement should not include log I/O to a terminal


async def daemon_run(n: int, storage: Path, marker: str) -> dict[str, list[float]]:
    structlog.configure(processors=[record])
    settings = Settings(
        storage=StorageSettings(root=storage), api=ApiSettings(port=0),
        worker=WorkerSettings(command=(PYTHON, "-I", str(FAKE_WORKER), "--marker", marker),
                              env={"BSUP_FAKE_SCRIPT": json.dumps(SCRIPT)}, heartbeat_interval=5.0),
        restart=RestartSettings(jitter=0.0),
    )
    sup = Supervisor(settings)
    await sup.start_tenant("bench")
    tenant = sup.tenants["bench"]
    while tenant.spawns < n + 1:
        await asyncio.sleep(0.05)
    await sup.shutdown()
    overhead, restart = [], []
    last_exit = last_close = None
    for t, ev in EVENTS:
        if ev == "worker.exited":
            last_exit = t
        elif ev == "tenant.close":
            last_close = t
        elif ev == "worker.spawned" and last_exit is not None:
            overhead.append(t - last_exit)
            last_exit = None
        elif ev == "worker.hello" and last_close is not None:
            restart.append(t - last_close)
            last_close = None
    return {"overhead": overhead[:n], "restart": restart[:n]}


async def baseline_run(n: int, storage: Path, marker: str) -> list[float]:
    """Bare spawn of the same worker (same argv and environment) to its first line; the lock fd is a plain file."""
    ws = WorkerSettings(command=(PYTHON, "-I", str(FAKE_WORKER), "--marker", marker),
                        env={"BSUP_FAKE_SCRIPT": json.dumps(SCRIPT)}, heartbeat_interval=5.0)
    lock = os.open(storage / "baseline.lock", os.O_RDWR | os.O_CREAT)
    env = worker_env(ws, "baseline", storage / "baseline-auth", lock)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*ws.command, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                                                    start_new_session=True, pass_fds=(lock,), env=env)
        await proc.stdout.readline()
        out.append(time.perf_counter() - t0)
        proc.stdin.close()
        await proc.wait()
    os.close(lock)
    return out


def fmt(xs: list[float]) -> str:
    return f"p50 {pct(xs, 50) * 1e3:7.2f} ms   p95 {pct(xs, 95) * 1e3:7.2f} ms   (n={len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--restarts", type=int, default=300)
    args = ap.parse_args()
    marker = f"bsup-bench-{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        base = asyncio.run(baseline_run(args.restarts, storage, marker))
        res = asyncio.run(daemon_run(args.restarts, storage, marker))
    print(f"# bench/respawn.py  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"# {machine()}")
    print(f"daemon overhead (exited -> next spawned)     {fmt(res['overhead'])}   goal p50 <= 10 ms")
    print(f"restart as seen (close line -> next hello)   {fmt(res['restart'])}")
    print(f"baseline: bare spawn -> first line            {fmt(base)}")
    print(f"ratio restart/baseline: p50 {pct(res['restart'], 50) / pct(base, 50):.2f}x, "
          f"p95 {pct(res['restart'], 95) / pct(base, 95):.2f}x;  overhead/baseline p50 "
          f"{pct(res['overhead'], 50) / pct(base, 50):.3f}")


if __name__ == "__main__":
    main()
