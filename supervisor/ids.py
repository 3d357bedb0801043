"""The tenant id: the one definition of which strings are tenant ids (the API, the config loader and the daemon all
ask here). The id becomes a directory name under storage, so it is checked before any path is built from it.
Also the phone number a pairing code is asked for, checked by the API before any worker sees it."""

from __future__ import annotations

import re

from .errors import BadRequest, InvalidTenantId

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


# The digits of an international number, country code first. E.164 allows at most 15; no country code starts with
# 0, so a leading 0 or 00 is a national or dialling prefix (the worker refused it: a 502 instead of this 400). At
# least 7, not 8: Niue and Tokelau numbers are 7 digits with their country code. In openapi.json too
# (tests/test_ops_openapi.py compares them).
PHONE_PATTERN = "^[1-9][0-9]{6,14}$"
_PHONE_RE = re.compile(PHONE_PATTERN[1:-1])
_PHONE_FORMATTING = re.compile(r"[\s()+.-]")  # what people write around the digits: "+972 50-123 4567"


def validate_phone(value: object) -> str:
    """The digits of `value` (a string with the usual formatting, or an integer), else BadRequest (HTTP 400)."""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise BadRequest('body must be {"phone": "<international number>"}')
    digits = _PHONE_FORMATTING.sub("", str(value))
    if not _PHONE_RE.fullmatch(digits):
        raise BadRequest("phone must be an international number: country code first, no leading 0 or 00, "
                         "7 to 15 digits, e.g. 972501234567")
    return digits
