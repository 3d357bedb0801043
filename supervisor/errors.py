"""Errors the library raises; the API maps each to its JSON error code and HTTP status, the CLI to an exit code."""

from __future__ import annotations


class SupervisorError(Exception):
    """Base: `code` is the stable machine-readable error code, `status` the HTTP status that fits it."""

    code = "internal"
    status = 500

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details  # extra JSON-safe fields for the error body (e.g. owner_pid)


class ConfigError(SupervisorError):
    code = "bad_config"
    status = 500


class InvalidTenantId(SupervisorError):
    code = "invalid_tenant"
    status = 400


class BadRequest(SupervisorError):
    code = "bad_request"
    status = 400


class UnknownTenant(SupervisorError):
    code = "unknown_tenant"
    status = 404


class TenantLocked(SupervisorError):
    """Another process (usually another daemon's worker) holds the tenant's auth lock."""

    code = "tenant_locked"
    status = 409


class NotRunning(SupervisorError):
    """The command needs a live worker (e.g. pairing code) and the tenant has none."""

    code = "not_running"
    status = 409


class AlreadyLinked(SupervisorError):
    """A pairing code was asked for a tenant whose creds are already linked: `logout` first to link another phone."""

    code = "already_linked"
    status = 409


class NotReady(SupervisorError):
    """The worker runs but has no registration socket yet (starting, reconnecting): retry in a moment."""

    code = "not_ready"
    status = 409


class TenantLinked(SupervisorError):
    """`forget` of a tenant whose auth is a linked device: its creds are never deleted; `logout` first."""

    code = "linked"
    status = 409


class TooManyTenants(SupervisorError):
    """A start of a new tenant id while `limits.max_tenants` tenants are known (details: `limit`). Nothing of the
    refused id is created; forgetting a never-linked tenant makes room."""

    code = "too_many_tenants"
    status = 429


class AtCapacity(SupervisorError):
    """A start while `limits.max_processes` live Node processes (running tenants + standbys) are reached (details:
    `limit`). 503: the daemon is fine but full; retrying helps once some tenant stops."""

    code = "capacity"
    status = 503


class WorkerCommandFailed(SupervisorError):
    code = "worker_error"
    status = 502


class WorkerTimeout(SupervisorError):
    code = "worker_timeout"
    status = 504


class ShuttingDown(SupervisorError):
    code = "shutting_down"
    status = 503


class StorageError(SupervisorError):
    """The tenant's storage refused a write or an open (read-only filesystem, full disk, immutable file, EIO...).

    507 Insufficient Storage rather than 503: a client can tell it apart from `shutting_down` by the status alone,
    and retrying will not help until an operator frees or fixes the disk. The message carries what the daemon tried
    and the OS's reason (strerror), never a path outside the tenant or any file content."""

    code = "storage_error"
    status = 507

    @classmethod
    def from_os(cls, tenant: str, what: str, exc: OSError) -> "StorageError":
        import errno

        reason = exc.strerror or type(exc).__name__
        name = errno.errorcode.get(exc.errno, None) if isinstance(exc.errno, int) else None
        return cls(f"tenant {tenant}: cannot {what}: {reason}", tenant=tenant, errno=name)
