"""A one-shot probe in a separate process for the multi-process tests (a second Supervisor beside a running daemon;
the daemon itself is support.DaemonProcess):

    python tests/daemon_proc.py '<json>' T1 T2...   start each tenant once, print one JSON line per tenant
                                                    ({"tenant", "ok", "error", "details", "state"}), stop, exit
<json>: {"storage", "marker", "state", "env": {...}, "script": [...] | null}
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
from supervisor.settings import Settings  # noqa: E402


def build(cfg: dict) -> Settings:
    """The one test config (support.fake_config)."""
    return settings_of(fake_config(Path(cfg["storage"]), Path(cfg["state"]), cfg["marker"], cfg.get("script"),
                                   env=cfg.get("env")))


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
    asyncio.run(probe(build(json.loads(sys.argv[1])), sys.argv[2:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
