"""The real daemon (run_daemon: Supervisor + API) in its own process, for the benchmarks that measure it from
outside (RSS, CPU, latency under load).

    python tests/hostile/daemon_host.py '<json>'
<json>: {"storage", "port", "command": [argv], "env": {}, "heartbeat_interval", "heartbeat_timeout", "stop_grace",
         "restart": {RestartSettings fields}, "boot": [...], "log_level": "info", "secret": null,
         "max_concurrent_spawns": 8}
Logs are JSON lines on stdout, configured as `baileys-supervisor run` does (so log cost is part of what is measured).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from supervisor.runner import run_daemon
from supervisor.events import configure_logging
from supervisor.settings import (ApiSettings, LoggingSettings, RestartSettings, Settings, StorageSettings,
                                 TenantsSettings, WorkerSettings)


def build(cfg: dict) -> Settings:
    return Settings(
        storage=StorageSettings(root=Path(cfg["storage"])),
        api=ApiSettings(host="127.0.0.1", port=cfg["port"], secret=cfg.get("secret")),
        worker=WorkerSettings(command=tuple(cfg["command"]), env=cfg.get("env", {}),
                              heartbeat_interval=cfg.get("heartbeat_interval", 0.5),
                              heartbeat_timeout=cfg.get("heartbeat_timeout", 5.0),
                              stop_grace=cfg.get("stop_grace", 1.0),
                              max_concurrent_spawns=cfg.get("max_concurrent_spawns", 8)),
        restart=RestartSettings(**cfg.get("restart", {})),
        tenants=TenantsSettings(boot=tuple(cfg.get("boot", ()))),
        logging=LoggingSettings(format="json", level=cfg.get("log_level", "info")),
    )


def main() -> int:
    settings = build(json.loads(sys.argv[1]))
    configure_logging("json", settings.logging.level)
    asyncio.run(run_daemon(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
