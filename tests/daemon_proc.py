"""A daemon (or a one-shot probe) in a separate process, for the multi-process acceptance tests.

    python tests/daemon_proc.py run   '<json>'            run_daemon() until SIGTERM/SIGINT, exit 0
    python tests/daemon_proc.py probe '<json>' T1 T2...   start each tenant once, print one JSON line per tenant
                                                          ({"tenant", "ok", "error", "details", "state"}), stop, exit
<json>: {"storage", "marker", "state", "boot": [...], "stop_grace", "env": {...}, "script": [...] | null}
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import fake_config, settings_of  # noqa: E402

from supervisor.daemon import Supervisor  # noqa: E402
from supervisor.errors import SupervisorError  # noqa: E402
from supervisor.runner import run_daemon  # noqa: E402
from supervisor.settings import Settings  # noqa: E402


def build(cfg: dict) -> Settings:
    """The one test config (support.fake_config); a `run` daemon is support.DaemonProcess in new tests."""
    return settings_of(fake_config(Path(cfg["storage"]), Path(cfg["state"]), cfg["marker"], cfg.get("script"),
                                   boot=cfg.get("boot", ()), env=cfg.get("env"),
                                   worker={"stop_grace": cfg.get("stop_grace", 2.0),
                                           "prewarm": cfg.get("prewarm", False)}))


async def probe(settings: Settings, tenants: list[str]) -> None:
    sup = Supervisor(settings)
    for tid in tenants:
        try:
            st = await sup.start_tenant(tid)
            out = {"tenant": tid, "ok": True, "state": st["state"], "pid": st["pid"]}
        except SupervisorError as exc:
            out = {"tenant": tid, "ok": False, "error": exc.code, "status": exc.status, "details": exc.details}
        print(json.dumps(out), flush=True)
    await sup.shutdown()


def main() -> int:
    mode, cfg = sys.argv[1], json.loads(sys.argv[2])
    settings = build(cfg)
    if mode == "probe":
        asyncio.run(probe(settings, sys.argv[3:]))
    else:
        asyncio.run(run_daemon(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
