"""Property-based tests of the strict config loader (supervisor/config.py): any YAML structure, and any file text,
gives either `Settings` or a `ConfigError` whose message starts with the file name and, for structural problems,
names the key path. Never another exception type: the CLI maps ConfigError to exit 2 with one clear line, while
anything else is a traceback (and exit 1) at daemon start.

The explicit regression cases at the bottom pin the inputs that escaped as other exceptions when this file was
written (NUL bytes in paths, integers too large for float, non-UTF-8 files, 5000-digit YAML integers)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.config import load_settings, settings_from_dict
from supervisor.errors import ConfigError
from supervisor.settings import Settings

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])
SOURCE = "/tmp/bsup-fuzz/config.yaml"

# Every leaf key the loader knows, as a dotted path.
LEAVES = [
    "storage.root",
    "api.host", "api.port", "api.secret", "api.secret_env", "api.secret_file", "api.max_body_bytes",
    "worker.command", "worker.env", "worker.wa_url", "worker.browser", "worker.version_policy", "worker.log_level",
    "worker.socket_options", "worker.heartbeat_interval", "worker.heartbeat_timeout", "worker.stop_grace",
    "worker.max_concurrent_spawns",
    "restart.initial_delay", "restart.multiplier", "restart.max_delay", "restart.jitter", "restart.stable_after",
    "restart.max_attempts",
    "tenants.boot",
    "logging.format", "logging.level",
]
# A leaf checked against another one reports the other key when the relation breaks (documented behaviour).
RELATED = {
    "worker.heartbeat_interval": {"worker.heartbeat_timeout"},
    "restart.initial_delay": {"restart.max_delay"},
    "api.secret": {"api.host"}, "api.secret_env": {"api.host"}, "api.secret_file": {"api.host"},
    "api.host": {"api.host"},
}

# Scalars a YAML file can produce, biased towards edges: huge ints, inf/nan, NUL bytes, enum-ish strings.
edge_strings = st.sampled_from(["", "\x00", "a\x00b", "~", "~nobody/x", "../x", "/", "bundled", "latest",
                                "2.3000.1", "json", "info", "warn", "ws://h", "INTERNAL_SECRET", "1", "-a",
                                "0.0.0.0", "127.0.0.1", "::1", "localhost", "é", "\ud800"])
scalars = (st.none() | st.booleans() | st.integers() | st.sampled_from([10**400, -(10**400), 2**63, 0, -1])
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | edge_strings)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6) | edge_strings | st.integers(), c,
                                                        max_size=4),
    max_leaves=12,
)


def set_path(doc: dict, dotted: str, value) -> None:
    head, _, leaf = dotted.partition(".")
    doc.setdefault(head, {})[leaf] = value


def check(data, source: str = SOURCE, mutated: str | None = None):
    try:
        out = settings_from_dict(data, source=source)
    except ConfigError as exc:
        msg = str(exc)
        assert msg.startswith(f"{source}: "), msg
        key = exc.details.get("key")
        assert isinstance(key, str), f"ConfigError without a key path: {msg}"
        assert f"{key}:" in msg, msg
        if mutated is not None:
            ok = key == mutated or key.startswith((mutated + ".", mutated + "[")) or key in RELATED.get(mutated, ())
            assert ok, f"mutated {mutated}, error names {key}: {msg}"
        return exc
    assert isinstance(out, Settings)
    # What the daemon later does with these values must not blow up either (floats it sleeps on, argv it execs).
    for f in (out.worker.heartbeat_interval, out.worker.heartbeat_timeout, out.worker.stop_grace,
              out.restart.initial_delay, out.restart.max_delay, out.restart.multiplier):
        assert math.isfinite(f) and f > 0
    assert all("\x00" not in a for a in out.worker.command), "NUL in argv: exec would raise ValueError at spawn"
    assert all("\x00" not in k + v for k, v in out.worker.env.items()), "NUL in env: spawn would raise ValueError"
    assert "\x00" not in str(out.storage.root)
    return out


@pytest.fixture(autouse=True)
def no_env_secret(monkeypatch):
    monkeypatch.delenv("INTERNAL_SECRET", raising=False)


@FUZZ
@given(values)
def test_any_top_level_structure(data) -> None:
    check(data)


@FUZZ
@given(st.dictionaries(st.sampled_from(["storage", "api", "worker", "restart", "tenants", "logging"]), values,
                       max_size=6))
def test_any_section_contents(data) -> None:
    check(data)


@FUZZ
@given(leaf=st.sampled_from(LEAVES), value=values)
def test_one_bad_leaf_names_its_key_path(leaf: str, value) -> None:
    doc: dict = {}
    set_path(doc, leaf, value)
    check(doc, mutated=leaf)


@FUZZ
@given(text=st.text(max_size=300) | st.sampled_from([
    "a: [", "{", "- x\n- : y", "? [a, b]\n: 1", "!!python/object:os.system ls", "&a [*a]", "a: *b",
    "worker:\n  command: !!binary aGVsbG8=", "api: {port: 0x10000}", "tenants: {boot: [1, 1, 01]}"]))
def test_any_file_text(tmp_path_factory, text: str) -> None:
    p = tmp_path_factory.mktemp("cfg") / "c.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_settings(p)
    except ConfigError as exc:
        assert str(exc).startswith(f"{p}: ")


@FUZZ
@given(st.binary(max_size=200))
def test_any_file_bytes(tmp_path_factory, data: bytes) -> None:
    p = tmp_path_factory.mktemp("cfg") / "c.yaml"
    p.write_bytes(data)
    try:
        load_settings(p)
    except ConfigError as exc:
        assert str(exc).startswith(f"{p}: ")


def test_round_trip_through_yaml_of_valid_docs(tmp_path) -> None:
    # Sanity for the harness: a valid document passes through the same checks.
    doc = {"worker": {"command": ["python3", "./w.py"], "env": {"A": "1"}, "heartbeat_interval": 1,
                      "heartbeat_timeout": 2}, "restart": {"initial_delay": 0.5, "max_delay": 1}, "tenants": {"boot": [1]}}
    p = tmp_path / "ok.yaml"
    p.write_text(yaml.safe_dump(doc))
    s = load_settings(p)
    assert s.tenants.boot == ("1",) and s.worker.command[1] == str((tmp_path / "w.py").resolve())


# -- regressions: inputs that escaped as another exception type ----------------------------------------------------

ESCAPES = {
    "restart.initial_delay huge int (OverflowError in math.isfinite)": {"restart": {"initial_delay": 10**400}},
    "worker.heartbeat_interval huge int": {"worker": {"heartbeat_interval": 10**400}},
    "restart.jitter huge negative int": {"restart": {"jitter": -(10**400)}},
    "storage.root with NUL (ValueError in Path.resolve)": {"storage": {"root": "a\x00b"}},
    "api.secret_file with NUL (ValueError in read_text)": {"api": {"secret_file": "/tmp/x\x00y"}},
    "worker.command relative arg with NUL": {"worker": {"command": ["./w\x00"]}},
    "worker.command absolute arg with NUL (accepted, exec fails later)": {"worker": {"command": ["/bin/w\x00"]}},
    "worker.env value with NUL (accepted, spawn fails later)": {"worker": {"env": {"A": "x\x00y"}}},
}


@pytest.mark.parametrize("doc", list(ESCAPES.values()), ids=list(ESCAPES))
def test_regression_config_error_not_another_exception(doc) -> None:
    check(doc, mutated=next(f"{s}.{k}" for s, d in doc.items() for k in d))


def test_regression_non_utf8_file_is_a_config_error(tmp_path) -> None:
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"logging:\n  level: \xe9\n")  # a Latin-1 editor's file: UnicodeDecodeError escapes read_text()
    with pytest.raises(ConfigError) as info:
        load_settings(p)
    assert str(info.value).startswith(f"{p}: ")


def test_regression_5000_digit_integer_is_a_config_error(tmp_path) -> None:
    p = tmp_path / "digits.yaml"
    # PyYAML's int constructor hits Python's int-string limit (ValueError, not yaml.YAMLError).
    p.write_text("restart:\n  initial_delay: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(p)
    assert str(info.value).startswith(f"{p}: ")
