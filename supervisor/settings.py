"""Settings dataclasses: the one shape of the configuration. `config.py` fills them from YAML, strictly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The repository root when installed editable (`pip install -e .`): the bundled worker lives beside the package.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKER_SCRIPT = PROJECT_ROOT / "node_worker" / "src" / "worker.mjs"


# V8 flags of the shipped worker command, measured on connected workers (node_worker/README.md, bench/worker_rss.py):
# a 1 MiB young generation and one V8 platform thread (idle RSS ~110 -> ~85 MiB); --optimize-for-size (-4 MiB);
# --expose-gc so the worker collects once after the login burst (-2 MiB). Not --max-old-space-size (it only lowers
# the crash limit and slows the login), not --jitless/--lite-mode (Baileys needs WebAssembly).
WORKER_NODE_FLAGS = ("--max-semi-space-size=1", "--v8-pool-size=1", "--optimize-for-size", "--expose-gc")
# glibc malloc for every worker, unless the daemon's environment or worker.env sets them: one arena and fixed
# trim/mmap thresholds return freed memory to the kernel (-6 MiB RSS per connected worker, same CPU).
WORKER_MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_MMAP_THRESHOLD_": "131072"}


@dataclass(frozen=True)
class StorageSettings:
    root: Path = PROJECT_ROOT / "storage"  # tenants live under <root>/whatsapp/<tenant>/


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"  # loopback by default; a non-loopback host requires a secret
    port: int = 3300  # the seed's port
    secret: str | None = None  # resolved secret (from the file's `secret`, `secret_env` or `secret_file`)
    max_body_bytes: int = 64 * 1024
    # Connections (supervisor/api_server.py): one with no request in progress (idle keep-alive, or still sending its
    # headers) is closed after idle_timeout s; a body must arrive within body_timeout s (408); at max_connections a
    # new connection evicts the oldest idle one, or is answered 503 when all are busy (event streams, requests).
    idle_timeout: float = 15.0
    body_timeout: float = 10.0
    max_connections: int = 256


@dataclass(frozen=True)
class WorkerSettings:
    # argv of one worker (WORKER_NODE_FLAGS: why each flag)
    command: tuple[str, ...] = ("node", *WORKER_NODE_FLAGS, str(DEFAULT_WORKER_SCRIPT))
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
    # Not a config key: set by the loader when `cluster:` is present (auth writes through the daemon's fenced store,
    # BSUP_STATE_SYNC=1; docs/cluster.md "Tenant state").
    state_sync: bool = False


@dataclass(frozen=True)
class RestartSettings:
    initial_delay: float = 1.0  # first backoff delay, seconds
    multiplier: float = 2.0  # growth per consecutive failure
    max_delay: float = 60.0  # cap
    jitter: float = 0.2  # +- fraction of the delay, so many tenants do not reconnect in lockstep
    stable_after: float = 30.0  # open this long -> the failure count resets
    max_attempts: int | None = None  # consecutive failures before `failed`; None = retry forever


@dataclass(frozen=True)
class LimitsSettings:
    # Defaults for a 24 GB host; the reasoning is in config/baileys-supervisor.yaml. Read at each admission, so a
    # reload applies them at once (lowering one never stops what already runs).
    max_tenants: int = 500  # known tenants (objects, directories, metric series); a new id beyond -> 429
    max_processes: int = 250  # live Node processes: one per running tenant (also in backoff) + standbys -> 503
    max_standbys: int = 8  # standby workers at once (0: none); past it a tenant waits for its scan without one


@dataclass(frozen=True)
class TenantsSettings:
    boot: tuple[str, ...] = ()  # tenants started when the daemon starts


@dataclass(frozen=True)
class LoggingSettings:
    format: str = "auto"  # auto (console on a TTY, JSON otherwise) | json | console
    level: str = "info"


@dataclass(frozen=True)
class WebhookSettings:
    # Here, not in supervisor/webhook.py (which pulls in aiohttp): loading a config never imports the HTTP client.
    url: str | None = None  # None: forwarding off (messages are not spooled)
    secret: str | None = None  # sent as X-Internal-Secret; the loader defaults it to api.secret
    timeout: float = 10.0  # total seconds per POST
    initial_delay: float = 1.0  # retry backoff: first delay
    multiplier: float = 2.0
    max_delay: float = 60.0  # cap
    jitter: float = 0.2  # +- fraction, so tenants do not retry in lockstep
    max_items: int = 100_000  # spool bound (pending items); reached -> SpoolFull
    max_bytes: int | None = None  # optional bound on pending payload bytes
    spool_path: Path | None = None  # None: <storage.root>/webhook-spool.sqlite3; relative: against storage.root


# -- cluster (docs/cluster.md) --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterSettings:
    """`cluster:` present = several hosts share tenants through PostgreSQL (supervisor/cluster/); absent (None in
    Settings) = the single-host flock mode. Plain data: loading a config never imports psycopg."""

    backend: str = "postgres"
    dsn: str | None = field(default=None, repr=False)  # resolved from dsn | dsn_file | dsn_env; may hold a password
    node_id: str = ""  # the loader defaults it to the host name
    advertise_url: str | None = None  # this node's API, shown to the others (GET /cluster)
    max_tenants: int = 250  # per-node cap (~80 MB per connected worker)
    ping_interval: float = 1.0  # seconds between pings of the node-lock session
    # No successful ping for fence_after s -> the node fences itself (kills its workers, stops claiming). The server
    # drops a silent session, releasing the node lock, no earlier than release_after s; the loader keeps
    # fence_after <= release_after / 2 (the margin covers a stalled loop and the kill itself).
    fence_after: float = 4.0
    release_after: float = 10.0
    claim_interval: float = 0.5  # seconds between claim/takeover rounds (a dead node's tenants wait <= this)
    claim_batch: int = 1000  # tenants claimed per transaction at most
    idle_in_transaction_timeout: float = 5.0  # a stuck write cannot block an epoch bump longer than this
    statement_timeout: float = 15.0  # and lock_timeout: no statement waits forever


@dataclass(frozen=True)
class OutboxSettings:
    # Sending (README "Sending messages", supervisor/outbox_dispatch.py): per tenant, a token bucket of `rate`
    # messages per second with bursts of `burst`. WhatsApp publishes no limits; bursts to many new contacts get
    # accounts restricted, so the default is human-paced.
    rate: float = 1.0
    burst: int = 5
    send_timeout: float = 30.0  # seconds for the worker's reply to one `send`; then the message is handed over again
    max_attempts: int = 5  # sends that failed in the worker (not: tenant offline) before the message is `failed`
    keep_days: float = 30.0  # finished messages (delivered, read, failed) are deleted after this long
    path: Path | None = None  # None: <storage.root>/outbox.sqlite3; relative: against storage.root


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings = field(default_factory=StorageSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    restart: RestartSettings = field(default_factory=RestartSettings)
    tenants: TenantsSettings = field(default_factory=TenantsSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    cluster: ClusterSettings | None = None  # None = single host (flock)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    source: Path | None = None  # the YAML file these came from, for error messages and reload
