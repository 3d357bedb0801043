"""The strict YAML loader: every bad input is a ConfigError naming the file and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from supervisor.config import is_loopback, load_settings, settings_from_dict
from supervisor.errors import ConfigError
from supervisor.settings import DEFAULT_WORKER_SCRIPT, PROJECT_ROOT, LimitsSettings, Settings

SHIPPED = PROJECT_ROOT / "config" / "baileys-supervisor.yaml"


def write(tmp_path: Path, data: object, name: str = "x.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return p


@pytest.fixture(autouse=True)
def no_env_secret(monkeypatch):
    monkeypatch.delenv("INTERNAL_SECRET", raising=False)


def test_empty_file_gives_defaults(tmp_path):
    s = load_settings(write(tmp_path, ""))
    d = Settings()
    assert (s.api, s.worker, s.restart, s.tenants, s.logging) == (d.api, d.worker, d.restart, d.tenants, d.logging)
    assert s.worker.command == Settings().worker.command
    assert s.worker.command[0] == "node" and s.worker.command[-1] == str(DEFAULT_WORKER_SCRIPT)
    assert s.source == (tmp_path / "x.yaml").resolve()


def test_shipped_config_loads_with_storage_under_repo():
    s = load_settings(SHIPPED)
    assert s.storage.root == PROJECT_ROOT / "storage"
    assert (s.api.host, s.api.port) == ("127.0.0.1", 3300)
    assert s.worker.browser == ("AgentLocator", "Chrome", "10.0")


def test_limits_section_defaults_and_values(tmp_path):
    # the shipped file states the defaults
    assert load_settings(SHIPPED).limits == LimitsSettings() == LimitsSettings(500, 250, 8)
    s = load_settings(write(tmp_path, {"limits": {"max_tenants": 7, "max_processes": 3, "max_standbys": 0}}))
    assert s.limits == LimitsSettings(max_tenants=7, max_processes=3, max_standbys=0)
    assert load_settings(write(tmp_path, "")).limits == LimitsSettings()


def test_example_simulator_config_loads():
    s = load_settings(PROJECT_ROOT / "config" / "example-simulator.yaml")
    assert s.worker.wa_url and s.worker.wa_url.startswith("ws://127.0.0.1:")
    assert s.worker.command[-1] == str(DEFAULT_WORKER_SCRIPT)
    assert s.storage.root == PROJECT_ROOT / "storage" / "simulator"


def test_full_valid_config(tmp_path):
    (tmp_path / "secret.txt").write_text("from-file\n")
    p = write(tmp_path, {
        "storage": {"root": "data"},
        "api": {"host": "0.0.0.0", "port": 8080, "secret_file": "secret.txt", "max_body_bytes": 1024},
        "worker": {"command": ["python3", "./fake.py", "--flag"], "env": {"A": "1", "B": 2},
                   "wa_url": "ws://127.0.0.1:9/ws/chat", "browser": ["X", "Y", "1"], "version_policy": "2.3000.123",
                   "log_level": "info", "socket_options": {"qrTimeout": 40000, "connectTimeoutMs": 5000},
                   "heartbeat_interval": 1, "heartbeat_timeout": 3.5, "stop_grace": 0.5, "max_concurrent_spawns": 2,
                   "prewarm": False},
        "restart": {"initial_delay": 0.1, "multiplier": 1.5, "max_delay": 5, "jitter": 0, "stable_after": 2,
                    "max_attempts": 3},
        "tenants": {"boot": [1, "shop-2", 1]},
        "logging": {"format": "json", "level": "DEBUG"},
    })
    s = load_settings(p)
    assert s.storage.root == tmp_path / "data"
    assert s.api.secret == "from-file" and s.api.host == "0.0.0.0" and s.api.max_body_bytes == 1024
    assert s.worker.command == ("python3", str(tmp_path / "fake.py"), "--flag")
    assert s.worker.env == {"A": "1", "B": "2"}
    assert s.worker.socket_options == {"qrTimeout": 40000, "connectTimeoutMs": 5000}
    assert s.worker.stop_grace == 0.5 and isinstance(s.worker.heartbeat_interval, float)
    assert s.worker.prewarm is False
    assert s.restart.max_attempts == 3 and s.restart.jitter == 0.0
    assert s.tenants.boot == ("1", "shop-2")
    assert s.logging.level == "debug"


def test_relative_paths_resolve_against_the_config_dir_not_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    p = write(sub, {"storage": {"root": "../storage"}})
    monkeypatch.chdir("/")
    assert load_settings(p).storage.root == tmp_path / "storage"


@pytest.mark.parametrize("data,path,fragment", [
    ({"bogus": 1}, "bogus", "unknown key"),
    ({"worker": {"stop_grace_s": 1}}, "worker.stop_grace_s", "unknown key"),
    ({"worker": {"stop_grace": "abc"}}, "worker.stop_grace", "expected a number > 0, got 'abc'"),
    ({"worker": {"stop_grace": 0}}, "worker.stop_grace", "> 0"),
    ({"worker": {"stop_grace": True}}, "worker.stop_grace", "> 0"),
    ({"worker": {"stop_grace": float("nan")}}, "worker.stop_grace", "> 0"),
    ({"worker": {"command": "node worker.mjs"}}, "worker.command", "list of strings"),
    ({"worker": {"command": []}}, "worker.command", "list of strings"),
    ({"worker": {"command": ["node", 3]}}, "worker.command", "list of strings"),
    ({"worker": {"browser": ["a", "b"]}}, "worker.browser", "exactly 3"),
    ({"worker": {"browser": ["a", "b", 3]}}, "worker.browser", "exactly 3"),
    ({"worker": {"version_policy": "newest"}}, "worker.version_policy", "bundled, latest or 2.3000.N"),
    ({"worker": {"version_policy": "2.2413.1"}}, "worker.version_policy", "2.3000.N"),
    ({"worker": {"socket_options": {"keepAlive": 1}}}, "worker.socket_options.keepAlive", "unknown key"),
    ({"worker": {"socket_options": {"qrTimeout": "1s"}}}, "worker.socket_options.qrTimeout", "integer"),
    ({"worker": {"wa_url": "http://x"}}, "worker.wa_url", "ws://"),
    ({"worker": {"env": {"A": [1]}}}, "worker.env.A", "a string"),
    ({"worker": {"env": ["A=1"]}}, "worker.env", "a mapping"),
    ({"worker": {"log_level": "loud"}}, "worker.log_level", "one of"),
    ({"worker": {"heartbeat_interval": 10, "heartbeat_timeout": 5}}, "worker.heartbeat_timeout", "heartbeat_interval"),
    ({"worker": {"max_concurrent_spawns": 0}}, "worker.max_concurrent_spawns", ">= 1"),
    ({"worker": {"prewarm": "true"}}, "worker.prewarm", "true or false"),
    ({"worker": {"prewarm": 1}}, "worker.prewarm", "true or false"),
    ({"api": {"port": 70000}}, "api.port", "port"),
    ({"api": {"port": "3300"}}, "api.port", "port"),
    ({"api": {"max_body_bytes": 0}}, "api.max_body_bytes", ">= 1"),
    ({"api": {"secret_env": "BAD NAME"}}, "api.secret_env", "variable name"),
    ({"api": {"host": "0.0.0.0"}}, "api.host", "loopback"),
    ({"api": {"host": "192.168.1.5", "secret": ""}}, "api.host", "loopback"),
    ({"api": {"secret_file": "missing.txt"}}, "api.secret_file", "cannot read"),
    ({"restart": {"multiplier": 0.5}}, "restart.multiplier", ">= 1"),
    ({"restart": {"jitter": 1}}, "restart.jitter", "[0, 1)"),
    ({"restart": {"initial_delay": 10, "max_delay": 5}}, "restart.max_delay", "initial_delay"),
    ({"restart": {"max_attempts": 0}}, "restart.max_attempts", ">= 1"),
    ({"tenants": {"boot": ["../etc"]}}, "tenants.boot[0]", "tenant id"),
    ({"tenants": {"boot": ["ok", "a" * 65]}}, "tenants.boot[1]", "tenant id"),
    ({"tenants": {"boot": ["abc\n"]}}, "tenants.boot[0]", "tenant id"),  # re.match with `$` accepted it
    ({"tenants": {"boot": "1"}}, "tenants.boot", "list"),
    ({"logging": {"format": "xml"}}, "logging.format", "auto|json|console"),
    ({"logging": {"level": "verbose"}}, "logging.level", "one of"),
    ({"limits": {"max_tenants": 0}}, "limits.max_tenants", ">= 1"),
    ({"limits": {"max_processes": "250"}}, "limits.max_processes", "integer"),
    ({"limits": {"max_standbys": -1}}, "limits.max_standbys", ">= 0"),
    ({"limits": {"max_workers": 3}}, "limits.max_workers", "unknown key"),
    ({"storage": {"root": 5}}, "storage.root", "a string"),
    ({"storage": []}, "storage", "a mapping"),
    ([1, 2], "<top level>", "a mapping"),
])
def test_bad_values_name_file_and_key(tmp_path, data, path, fragment):
    p = write(tmp_path, data)
    with pytest.raises(ConfigError) as ei:
        load_settings(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: {path}: "), msg
    assert fragment in msg, msg


def test_error_message_example_from_the_brief(tmp_path):
    p = write(tmp_path, "worker:\n  stop_grace: abc\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: worker\.stop_grace: expected a number > 0, got 'abc'$"):
        load_settings(p)


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_settings(write(tmp_path, "api: [\n"))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "nope.yaml")


def test_secret_sources_and_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERNAL_SECRET", "from-env")
    assert load_settings(write(tmp_path, {})).api.secret == "from-env"
    monkeypatch.setenv("MY_SECRET", "mine")
    assert load_settings(write(tmp_path, {"api": {"secret_env": "MY_SECRET"}})).api.secret == "mine"
    (tmp_path / "cred").write_text("from-file\r\n")
    assert load_settings(write(tmp_path, {"api": {"secret_file": "cred"}})).api.secret == "from-file"
    assert load_settings(write(tmp_path, {"api": {"secret": "inline", "secret_file": "cred"}})).api.secret == "inline"
    # an env-provided secret makes a public bind acceptable
    assert load_settings(write(tmp_path, {"api": {"host": "0.0.0.0"}})).api.host == "0.0.0.0"


def test_empty_env_secret_counts_as_none(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERNAL_SECRET", "")
    assert load_settings(write(tmp_path, {})).api.secret is None


def test_loopback_hosts_need_no_secret(tmp_path):
    for host in ("127.0.0.1", "::1", "localhost", "127.1.2.3"):
        assert settings_from_dict({"api": {"host": host}}, tmp_path / "c.yaml").api.secret is None


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.255.0.9", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("10.0.0.1", False), ("", False),
    ("localhost.example.com", False), ("127.0.0.1.nip.io", False), ("example.com", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_settings_from_dict_without_source_uses_placeholder_name():
    with pytest.raises(ConfigError, match=r"^<config>: nope: unknown key"):
        settings_from_dict({"nope": 1})


def test_error_carries_key_and_file_details(tmp_path):
    p = write(tmp_path, {"restart": {"jitter": "x"}})
    with pytest.raises(ConfigError) as ei:
        load_settings(p)
    assert ei.value.details == {"key": "restart.jitter", "file": str(p)}
    assert ei.value.code == "bad_config"
