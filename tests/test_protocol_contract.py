"""The line protocol's contract: the daemon (supervisor/protocol.py, supervisor/worker.py), the Node worker
(node_worker/src/protocol.mjs and env.mjs, run here in a real `node`) and docs/protocol.md all agree with the one
description, supervisor/protocol.json. Each side is exercised, not just compared: Python-encoded commands go through
the worker's parseCommand, the same sample events through both validators, and the environment the daemon sets
through the worker's parseEnv."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from supervisor import protocol
from supervisor.protocol import DESCRIPTION, ProtocolError, encode_command, parse_line
from supervisor.settings import WorkerSettings
from supervisor.worker import worker_env

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_MJS = ROOT / "node_worker" / "src" / "protocol.mjs"
ENV_MJS = ROOT / "node_worker" / "src" / "env.mjs"
DOC = ROOT / "docs" / "protocol.md"
EVENTS: dict[str, dict[str, Any]] = DESCRIPTION["events"]
COMMANDS: dict[str, dict[str, Any]] = DESCRIPTION["commands"]

# One value per type name of the description, and values to try where a field's type does not allow them.
SAMPLE = {"int": 7, "number": 1.5, "string": "s", "bool": True, "object": {}, "array": [], "null": None}
PROBES = [True, "s", 1.5, 7, {}, [], None]

# The Node side: reads {commands: [line], events: [line], env: {...}} on stdin, answers with what protocol.mjs says.
NODE_SCRIPT = """
import { readFileSync } from 'node:fs';
const p = await import(process.argv[1]);
const { parseEnv } = await import(process.argv[2]);
const input = JSON.parse(readFileSync(0, 'utf8'));
const read = new Set();
const env = new Proxy(input.env, { get(t, k) { if (typeof k === 'string') read.add(k); return t[k]; } });
parseEnv(env, { checkFd: false });
const parsed = input.commands.map((line) => {
  try { return { ok: true, cmd: p.parseCommand(line) }; } catch (e) { return { ok: false, error: e.message }; }
});
const checked = input.events.map((line) => p.checkEvent(JSON.parse(line)));
process.stdout.write(JSON.stringify({
  version: p.PROTOCOL_VERSION, maxLineBytes: p.MAX_LINE_BYTES, maxCommandBytes: p.MAX_COMMAND_BYTES,
  commands: p.COMMANDS, envRead: [...read].filter((k) => k.startsWith('BSUP_')), parsed, checked,
}));
"""


def run_node(commands: list[bytes], events: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    stdin = json.dumps({"commands": [c.decode().rstrip("\n") for c in commands], "events": events,
                        "env": env or {"BSUP_TENANT": "t", "BSUP_AUTH_DIR": "/a"}})
    out = subprocess.run(["node", "--input-type=module", "-e", NODE_SCRIPT, PROTOCOL_MJS.as_uri(),
                          ENV_MJS.as_uri()], input=stdin,
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def first_type(spec: dict[str, Any]) -> str:
    return spec["type"][0] if isinstance(spec["type"], list) else spec["type"]


def allowed(spec: dict[str, Any]) -> list[str]:
    return spec["type"] if isinstance(spec["type"], list) else [spec["type"]]


def full_event(etype: str) -> dict[str, Any]:
    return {"type": etype, "ts": 1, **{name: SAMPLE[first_type(spec)] for name, spec in EVENTS[etype].items()}}


def kinds(value: Any) -> set[str]:
    """The description's type names a JSON value satisfies."""
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"bool"}
    if isinstance(value, int):
        return {"int", "number"}
    if isinstance(value, float):
        return {"number"}
    return {str: {"string"}, list: {"array"}, dict: {"object"}}[type(value)]


def wrong_values(spec: dict[str, Any]) -> list[Any]:
    """Every probe this field's type does not allow (`number` allows ints; `int` does not allow 1.5)."""
    return [p for p in PROBES if not kinds(p) & set(allowed(spec))]


def event_cases() -> list[tuple[str, dict[str, Any], bool]]:
    """(label, event, valid) for every type: complete, minimal, each field with each wrong type, each required
    field missing."""
    cases = []
    for etype, fields in EVENTS.items():
        cases.append((f"{etype} full", full_event(etype), True))
        cases.append((f"{etype} minimal", {"type": etype, **{n: SAMPLE[first_type(s)] for n, s in fields.items()
                                                             if s.get("required")}}, True))
        for name, spec in {**fields, **DESCRIPTION["eventCommon"]}.items():
            for wrong in wrong_values(spec):
                cases.append((f"{etype}.{name} = {wrong!r}", {**full_event(etype), name: wrong}, False))
            if spec.get("required"):
                event = full_event(etype)
                del event[name]
                cases.append((f"{etype}.{name} missing", event, False))
    return cases


def python_accepts(event: dict[str, Any]) -> bool:
    try:
        parse_line(json.dumps(event).encode())
    except ProtocolError:
        return False
    return True


def command_lines() -> list[tuple[str, bytes, dict[str, Any] | None]]:
    """(label, line Python encodes, what the worker must parse it to -- None: it must refuse it)."""
    cases = []
    for cmd, fields in COMMANDS.items():
        good = {name: spec["example"] for name, spec in fields.items() if spec.get("required")}
        cases.append((cmd, encode_command(cmd, id="c1", **good), {"cmd": cmd, "id": "c1", **good}))
        cases.append((f"{cmd} without id", encode_command(cmd, **good), {"cmd": cmd, **good}))
        for name in good:
            cases.append((f"{cmd} without {name}", encode_command(cmd, id="c2"), None))
    cases.append(("unknown command", b'{"cmd":"reboot","id":"c3"}\n', None))
    return cases


@pytest.fixture(scope="module")
def node_side() -> dict[str, Any]:
    env = {k: v for k, v in worker_env(WorkerSettings(wa_url="ws://127.0.0.1:1/ws/chat",
                                                      socket_options={"qrTimeout": 1000}, state_sync=True),
                                       "t1", Path("/tmp/auth"), 9, standby=True).items() if k.startswith("BSUP_")}
    return {"env": env, **run_node([line for _, line, _ in command_lines()],
                                   [json.dumps(e) for _, e, _ in event_cases()], env)}


def test_constants_agree(node_side):
    assert protocol.PROTOCOL_VERSION == node_side["version"] == DESCRIPTION["version"]
    assert protocol.MAX_LINE_BYTES == node_side["maxLineBytes"] == DESCRIPTION["maxLineBytes"]
    assert node_side["maxCommandBytes"] == DESCRIPTION["maxCommandBytes"]
    assert sorted(protocol.COMMANDS) == sorted(node_side["commands"]) == sorted(COMMANDS)
    assert protocol.EVENT_TYPES == set(EVENTS)


def test_every_command_the_daemon_encodes_is_parsed_by_the_worker(node_side):
    for (label, _, expected), got in zip(command_lines(), node_side["parsed"], strict=True):
        if expected is None:
            assert not got["ok"], f"{label}: the worker accepted {got}"
        else:
            assert got == {"ok": True, "cmd": expected}, label


def test_both_validators_agree_on_every_event_case(node_side):
    for (label, event, valid), node_problems in zip(event_cases(), node_side["checked"], strict=True):
        assert python_accepts(event) is valid, f"daemon: {label}"
        assert (node_problems == []) is valid, f"worker: {label}: {node_problems}"


def test_environment_daemon_sets_is_what_the_worker_reads(node_side):
    assert sorted(node_side["env"]) == sorted(DESCRIPTION["env"]), "daemon's worker_env()"
    assert sorted(node_side["envRead"]) == sorted(DESCRIPTION["env"]), "worker's parseEnv()"


def doc_table(heading: str) -> dict[str, str]:
    """First-column name -> rest of the row, for the table under `heading` in docs/protocol.md."""
    text = DOC.read_text()
    section = text[text.index(heading):]
    rows = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        m = re.match(r"\| `([A-Za-z_]+)` \|(.*)", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_docs_list_every_event_command_field_and_variable():
    events, commands = doc_table("## Worker -> daemon events"), doc_table("## Daemon -> worker commands")
    assert sorted(events) == sorted(EVENTS)
    assert sorted(commands) == sorted(COMMANDS)
    assert sorted(doc_table("## Environment set by the daemon")) == sorted(DESCRIPTION["env"])
    for table, described in ((events, EVENTS), (commands, COMMANDS)):
        for name, fields in described.items():
            documented = set(re.findall(r"`([A-Za-z_]+)`", table[name].split("|")[0]))
            assert set(fields) <= documented, f"{name}: {sorted(set(fields) - documented)} not in docs/protocol.md"
