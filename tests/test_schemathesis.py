"""schemathesis against the live API's /openapi.json: a real `baileys-supervisor run` daemon (subprocess, fake
workers from tests/fake_worker.py), once with a secret configured and once without.

Every generated request (positive and negative data, bounded by MAX_EXAMPLES per operation) must get: no 5xx, a
status code the spec documents for that operation, a documented content type, a body conforming to the response
schema, and JSON whenever the spec says JSON (every route except /metrics text and the /qr image formats).
The two Server-Sent-Event routes are excluded: they stream forever (tests/test_ops_sse.py covers them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (content_type_conformance, not_a_server_error,  # noqa: E402
                                 response_schema_conformance, status_code_conformance)

from conftest import kill_marked, live_workers  # noqa: E402
from support import WAIT, DaemonProcess, fake_config, free_port  # noqa: E402

SECRET = "schemathesis-secret"
MAX_EXAMPLES = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SSE = ("/events", "/whatsapp/{tenant}/events")

pytestmark = pytest.mark.slow


def _daemon(tmp: Path, secret: str | None, marker: str) -> DaemonProcess:
    state = tmp / "fake-state"
    state.mkdir()
    cfg = fake_config(tmp / "storage", state, marker, port=free_port(), secret=secret,
                      worker={"heartbeat_interval": 1.0, "heartbeat_timeout": 20}, restart={"initial_delay": 0.5,
                                                                                            "max_delay": 2.0},
                      logging={"format": "json", "level": "warning"})
    return DaemonProcess(tmp / "daemon", cfg, new_session=True).start()


def _stop(d: DaemonProcess, marker: str) -> None:
    rc = d.stop()
    left = live_workers(marker)
    kill_marked(marker)
    assert not left, f"workers left behind: {left}"
    assert rc == 0, rc


@pytest.fixture(scope="module", params=["secret", "no-secret"])
def api(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"st-{request.param}")
    secret = SECRET if request.param == "secret" else None
    marker = f"bsup-st-{os.getpid()}-{request.param}"
    d = _daemon(tmp, secret, marker)
    yield {"url": d.url, "secret": secret, "headers": {"X-Internal-Secret": secret} if secret else {}}
    _stop(d, marker)


@pytest.fixture(scope="module")
def api_schema(api):
    schema = schemathesis.openapi.from_url(api["url"] + "/openapi.json")
    # The daemon is the server under test (the spec's `servers` entry is the shipped port 3300).
    schema.config.base_url = api["url"]
    return schema


def _check_json(case, response) -> None:
    ctype = response.headers.get("content-type", [""])
    ctype = (ctype[0] if isinstance(ctype, list) else ctype).split(";")[0].strip()
    if ctype == "application/json" or not (case.path == "/metrics" or ctype.startswith("image/")):
        try:
            json.loads(response.content)
        except ValueError:
            raise AssertionError(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                 f"not JSON ({ctype!r}): {response.content[:200]!r}") from None


def _run(api_schema, api, headers: dict, max_examples: int, extra=None) -> None:
    """Every operation of the spec (SSE excluded) through hypothesis with schemathesis' strategies; failures are
    collected over all operations and reported together. (schemathesis.pytest.from_fixture is not usable here:
    schemathesis 4.32 reads `request.node._nodeid`, which pytest 9 no longer has.)"""
    failures: list[str] = []
    seen: dict[int, int] = {}
    ops = 0
    for result in api_schema.get_all_operations():
        op = result.ok()
        if op.path in SSE:
            continue
        ops += 1

        @given(case=st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE)))
        @settings(max_examples=max_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.explicit, Phase.generate])
        def run(case):
            response = case.call(headers=headers, timeout=WAIT)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            try:
                case.validate_response(response, checks=CHECKS)
                _check_json(case, response)
                if extra:
                    extra(case, response)
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - schemathesis raises FailureGroup
                parts = getattr(exc, "exceptions", None) or [exc]
                text = [f"{getattr(e, 'title', type(e).__name__)}: {getattr(e, 'message', str(e))}".strip()
                        for e in parts]
                msg = f"{case.method} {case.formatted_path} -> {response.status_code}: {' | '.join(text[:6])}"
                if msg not in failures:
                    failures.append(msg)

        run()
    assert ops >= 10, ops
    print(f"\n{ops} operations, responses by status: {dict(sorted(seen.items()))}")
    assert not failures, f"{len(failures)} problems:\n" + "\n".join(failures[:40])


def test_api_conforms(api_schema, api):
    """With the secret when one is set (the handlers are exercised), and without any when none is set: zero 5xx,
    documented status codes and content types, bodies conforming to the spec, JSON everywhere."""
    _run(api_schema, api, api["headers"], MAX_EXAMPLES)


def test_api_unauthenticated(api_schema, api):
    """No credentials at all: with a secret configured every protected route must be a (documented, JSON) 401."""
    def must_401(case, response):
        if api["secret"] and case.path not in ("/healthz", "/openapi.json"):
            assert response.status_code == 401, f"expected 401 without credentials, got {response.status_code}"

    _run(api_schema, api, {}, 4, must_401)
