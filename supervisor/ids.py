"""The tenant id: the one definition of which strings are tenant ids (the API, the config loader and the daemon all
ask here). The id becomes a directory name under storage, so it is checked before any path is built from it."""

from __future__ import annotations

import re

from .errors import InvalidTenantId

# Shown in error messages and documented in README.md and openapi.json (tests/test_ops_openapi.py compares them).
TENANT_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# fullmatch, never match: with `$`, re.match accepts a trailing newline ("abc\n", i.e. /whatsapp/abc%0A/...).
_TENANT_ID_RE = re.compile(TENANT_ID_PATTERN[1:-1])


def is_tenant_id(value: object) -> bool:
    return isinstance(value, str) and _TENANT_ID_RE.fullmatch(value) is not None


def validate_tenant_id(value: object) -> str:
    """`value` itself when it is a tenant id, else InvalidTenantId (HTTP 400) with a bounded, repr'd echo."""
    if not is_tenant_id(value):
        raise InvalidTenantId(f"invalid tenant id {str(value)[:80]!r}: expected {TENANT_ID_PATTERN}")
    return value  # type: ignore[return-value]  # is_tenant_id checked it is a str
