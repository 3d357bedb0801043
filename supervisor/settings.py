"""Settings dataclasses: the one shape of the configuration. `config.py` fills them from YAML, strictly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The repository root when installed editable (`pip install -e .`): the bundled worker lives beside the package.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKER_SCRIPT = PROJECT_ROOT / "node_worker" / "src" / "worker.mjs"


@dataclass(frozen=True)
class StorageSettings:
    root: Path = PROJECT_ROOT / "storage"  # tenants live under <root>/whatsapp/<tenant>/


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"  # loopback by default; a non-loopback host requires a secret
    port: int = 3300  # the seed's port
    secret: str | None = None  # resolved secret (from the file's `secret`, `secret_env` or `secret_file`)
    max_body_bytes: int = 64 * 1024


@dataclass(frozen=True)
class WorkerSettings:
    # argv of one worker. The V8 flags cut an idle worker's RSS from ~110 MiB to ~85 MiB (node_worker/bench/rss.mjs):
    # a 1 MiB young generation and one V8 platform thread; --max-old-space-size is left alone on purpose (it only
    # lowers the crash limit, it does not shrink an idle heap).
    command: tuple[str, ...] = ("node", "--max-semi-space-size=1", "--v8-pool-size=1", str(DEFAULT_WORKER_SCRIPT))
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every worker
    wa_url: str | None = None  # WhatsApp Web endpoint override (the simulator in tests)
    browser: tuple[str, str, str] = ("AgentLocator", "Chrome", "10.0")
    version_policy: str = "bundled"  # bundled | latest | 2.3000.N
    log_level: str = "warn"  # the worker's pino level (stderr)
    socket_options: dict[str, int] = field(default_factory=dict)  # Baileys timings, see docs/protocol.md
    heartbeat_interval: float = 5.0  # seconds between worker heartbeats
    heartbeat_timeout: float = 30.0  # no line for this long -> the worker is killed and handled as a crash
    stop_grace: float = 5.0  # SIGTERM -> SIGKILL grace for the worker's process group
    max_concurrent_spawns: int = 8  # spawns in flight at once (boot of many tenants stays gentle)
    # While a QR is shown, pre-start the worker that logs in after the scan's 515 restart (supervisor/standby.py):
    # ~0.9 s less from scan to connected, for one more idle process per tenant that is waiting for a scan.
    prewarm: bool = True


@dataclass(frozen=True)
class RestartSettings:
    initial_delay: float = 1.0  # first backoff delay, seconds
    multiplier: float = 2.0  # growth per consecutive failure
    max_delay: float = 60.0  # cap
    jitter: float = 0.2  # +- fraction of the delay, so many tenants do not reconnect in lockstep
    stable_after: float = 30.0  # open this long -> the failure count resets
    max_attempts: int | None = None  # consecutive failures before `failed`; None = retry forever


@dataclass(frozen=True)
class TenantsSettings:
    boot: tuple[str, ...] = ()  # tenants started when the daemon starts


@dataclass(frozen=True)
class LoggingSettings:
    format: str = "auto"  # auto (console on a TTY, JSON otherwise) | json | console
    level: str = "info"


@dataclass(frozen=True)
class WebhookConfig:
    # Same fields as supervisor.webhook.WebhookSettings (which pulls in aiohttp): the daemon converts one into the
    # other, so loading a config never imports the HTTP client.
    url: str | None = None  # None: forwarding off (messages are not spooled)
    secret: str | None = None  # X-Internal-Secret; the loader defaults it to api.secret
    timeout: float = 10.0
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.2
    max_items: int = 100_000
    max_bytes: int | None = None
    spool_path: Path | None = None  # None: <storage.root>/webhook-spool.sqlite3; relative: against storage.root


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings = field(default_factory=StorageSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    restart: RestartSettings = field(default_factory=RestartSettings)
    tenants: TenantsSettings = field(default_factory=TenantsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    source: Path | None = None  # the YAML file these came from, for error messages and reload
