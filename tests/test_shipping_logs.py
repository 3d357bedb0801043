"""docs/shipping-logs.md: the Vector example is wired consistently and matches what the daemon really writes.

Vector itself is not packaged for Debian, so `vector validate`/`vector test` cannot run here; these checks catch the
drift that is most likely (a renamed event, a changed `ts` format, a dangling `inputs` reference).
"""

from __future__ import annotations

import io
import json
import re

import structlog
import yaml

from supervisor.events import configure_logging, get_logger
from supervisor.settings import PROJECT_ROOT

DOC = PROJECT_ROOT / "docs" / "shipping-logs.md"


def vector_config() -> dict:
    match = re.search(r"## Vector.*?```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert match, "docs/shipping-logs.md lost its Vector example"
    return yaml.safe_load(match.group(1))


def test_components_are_wired():
    cfg = vector_config()
    outputs = set(cfg["sources"])
    for name, t in cfg["transforms"].items():
        outputs.add(name)
        if t["type"] == "route":
            outputs |= {f"{name}.{route}" for route in t["route"]} | {f"{name}._unmatched"}
        if t["type"] == "remap" and t.get("reroute_dropped"):
            outputs.add(f"{name}.dropped")
    consumed = set()
    for kind in ("transforms", "sinks"):
        for name, comp in cfg[kind].items():
            for inp in comp["inputs"]:
                assert inp in outputs, f"{kind}.{name}: input {inp!r} does not exist"
                consumed.add(inp)
    routes = {o for o in outputs if o.startswith("bsup_route.")}
    assert routes <= consumed, f"route outputs nobody reads: {routes - consumed}"
    assert "bsup_parse.dropped" in consumed  # unparsable lines are kept, not lost
    assert "parse_json!" in cfg["transforms"]["bsup_parse"]["source"]
    assert cfg["sources"]["bsup_journal"]["include_units"] == ["baileys-supervisor.service"]
    for test in cfg["tests"]:
        for inp in test["inputs"]:
            assert inp["insert_at"] in cfg["transforms"]
        for out in test["outputs"]:
            assert out["extract_from"] in outputs or out["extract_from"] in cfg["transforms"]


def test_sample_lines_have_the_daemons_shape():
    # A real line from the daemon's logging set-up, next to the doc's samples: same base fields, same ts format.
    buf = io.StringIO()
    configure_logging("json", "info", buf)
    try:
        get_logger(tenant="1").info("tenant.state", from_state="starting", to_state="qr", reason=None)
    finally:
        structlog.reset_defaults()  # global state: leave no StringIO behind for other tests' loggers
    real = json.loads(buf.getvalue().splitlines()[-1])
    ts_format = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")  # what the VRL parses with "%+"
    assert ts_format.match(real["ts"])
    for test in vector_config()["tests"]:
        message = test["inputs"][0]["log_fields"]["message"]
        if not message.startswith("{"):
            continue  # the deliberately unparsable sample
        sample = json.loads(message)
        assert {"event", "ts", "level", "pid", "tenant"} <= set(sample) and {"event", "ts", "level", "pid"} <= set(real)
        assert ts_format.match(sample["ts"])
        assert sample["level"] in ("debug", "info", "warning", "error", "critical")


def test_alerting_event_names_exist_in_the_daemon():
    # The alert list names events explicitly; a rename in the daemon would silently stop the paging.
    source = vector_config()["transforms"]["bsup_parse"]["source"]
    page = re.search(r"page = \[(.*?)\]", source, re.S)
    assert page
    names = re.findall(r'"([a-z_]+\.[a-z_]+)"', page.group(1))
    assert names
    code = "\n".join(p.read_text() for p in (PROJECT_ROOT / "supervisor").glob("*.py"))
    missing = [n for n in names if f'"{n}"' not in code]
    assert not missing, f"events in docs/shipping-logs.md that the daemon never emits: {missing}"
