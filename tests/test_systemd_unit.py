"""systemd/baileys-supervisor.service: `systemd-analyze verify` is silent on it, and the directives the daemon's
behaviour depends on are there (and agree with the settings and the sample config in systemd/README.md)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from supervisor.config import load_settings
from supervisor.settings import PROJECT_ROOT, WorkerSettings

UNIT = PROJECT_ROOT / "systemd" / "baileys-supervisor.service"
README = PROJECT_ROOT / "systemd" / "README.md"
EXEC_START = "/opt/baileys-supervisor/.venv/bin/baileys-supervisor"
CREDENTIAL_PATH = "/run/credentials/baileys-supervisor.service/internal-secret"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}: keys may repeat (SystemCallFilter=), so no configparser."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        assert section is not None, f"directive outside a section: {line!r}"
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def seconds(value: str) -> float:
    """systemd time span ("30", "30s", "1min 30s", "500ms") -> seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


def verify(unit_path: Path) -> subprocess.CompletedProcess:
    tool = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not os.access(tool, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: install the `systemd` package (Debian/Ubuntu)")
        pytest.skip("systemd-analyze not installed (package `systemd`)")
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="notice", SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="cat")
    # --man=no: Documentation= is a file: URL of the install layout, not a man page to look up.
    return subprocess.run(
        [tool, "verify", "--man=no", str(unit_path)], capture_output=True, text=True, env=env, timeout=30
    )


def verdict(result: subprocess.CompletedProcess) -> str | None:
    """None when clean. systemd-analyze exits 0 on most parse problems ("Unknown key ..., ignoring"), so any output
    at all counts as a failure, not just the exit code."""
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or output:
        return f"rc={result.returncode}: {output}"
    return None


@pytest.fixture
def staged(tmp_path):
    """Copy the unit to a clean dir, pointing ExecStart at a fake executable: verify requires it to exist."""
    fake = tmp_path / "baileys-supervisor"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    text = UNIT.read_text()
    assert f"ExecStart={EXEC_START} " in text
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()

    def stage(transform=lambda t: t) -> Path:
        path = unit_dir / "baileys-supervisor.service"
        path.write_text(transform(text.replace(f"ExecStart={EXEC_START} ", f"ExecStart={fake} ")))
        return path

    return stage


def test_systemd_analyze_verify_is_clean(staged):
    result = verify(staged())
    assert verdict(result) is None, verdict(result)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda t: t.replace("Type=notify", "Type=notifyy"),  # bad value: a warning, exit code 0
        lambda t: t.replace("WatchdogSec=", "WatchdogSecs="),  # unknown key: a warning, exit code 0
        lambda t: t.replace("ExecStart=/", "ExecStart=/nonexistent/"),  # missing binary: exit code 1
    ],
    ids=["bad-value", "unknown-key", "missing-exec"],
)
def test_verify_catches_a_broken_unit(staged, breakage):
    # Proves the clean verdict above means something: the same check fails on a deliberately broken copy.
    assert verdict(verify(staged(breakage))) is not None


def test_key_directives():
    unit = parse_unit(UNIT.read_text())
    svc = unit["Service"]

    def one(key: str) -> str:
        assert key in svc, f"{key}= missing"
        assert len(svc[key]) == 1, f"{key}= given more than once"
        return svc[key][0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"  # workers must not be able to ping the watchdog
    assert seconds(one("WatchdogSec")) >= 10  # pings every WatchdogSec/2 from the loop; not so short GC trips it
    assert one("ExecStart") == f"{EXEC_START} run --config /etc/baileys-supervisor/baileys-supervisor.yaml"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("KillMode") == "mixed"
    # Above the daemon's own stop grace with room for its wind-down (stop all in parallel, flush, exit).
    assert seconds(one("TimeoutStopSec")) >= WorkerSettings().stop_grace + 10
    assert one("Restart") == "on-failure"
    assert one("OOMPolicy") == "continue"
    assert one("User") == one("Group") == "baileys-supervisor"
    assert one("StateDirectory") == "baileys-supervisor"
    assert one("LoadCredential") == "internal-secret:/etc/baileys-supervisor/internal-secret"
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    }.items():
        assert one(key) == value, key
    assert one("ReadWritePaths") == "/var/lib/baileys-supervisor"  # storage only
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # node's JIT needs W+X pages: this directive would kill every worker at start-up.
    assert "MemoryDenyWriteExecute" not in svc
    assert "network-online.target" in unit["Unit"]["After"][0]


def sample_config() -> str:
    match = re.search(r"## Config for /etc/baileys-supervisor/baileys-supervisor\.yaml.*?```yaml\n(.*?)```",
                      README.read_text(), re.S)
    assert match, "systemd/README.md lost its sample config"
    return match.group(1)


def test_readme_sample_config_loads_and_matches_the_unit(tmp_path):
    text = sample_config()
    assert f"secret_file: {CREDENTIAL_PATH}" in text  # where LoadCredential=internal-secret puts it (%d)
    secret = tmp_path / "internal-secret"
    secret.write_text("s3cret\n")
    cfg = tmp_path / "baileys-supervisor.yaml"
    cfg.write_text(text.replace(CREDENTIAL_PATH, str(secret)))
    settings = load_settings(cfg)  # the strict loader: a key the daemon does not know fails here
    assert settings.storage.root == Path("/var/lib/baileys-supervisor")
    assert settings.api.secret == "s3cret"
    assert settings.logging.format == "json"
    timeout_stop = seconds(parse_unit(UNIT.read_text())["Service"]["TimeoutStopSec"][0])
    assert timeout_stop >= settings.worker.stop_grace + 10
    # An explicit worker.command replaces the default one whole: it must keep the memory-tuned V8 flags.
    from supervisor.settings import WORKER_NODE_FLAGS

    cmd = settings.worker.command
    assert cmd[0] == "/usr/bin/node" and cmd[-1] == "/opt/baileys-supervisor/node_worker/src/worker.mjs"
    assert tuple(cmd[1:-1]) == WORKER_NODE_FLAGS, cmd


def test_readme_operator_commands_pass_the_daemons_config():
    """Without --config the CLI reads the repository's config (no secret, another storage): every command the README
    tells an operator to run against the installed daemon must name the installed config."""
    rows = [line for line in README.read_text().splitlines() if "bin/baileys-supervisor " in line and "`" in line]
    commands = [c for line in rows for c in re.findall(r"`([^`]*bin/baileys-supervisor [^`]*)`", line)]
    assert commands, "systemd/README.md lost its operator commands"
    for command in commands:
        assert "--config /etc/baileys-supervisor/baileys-supervisor.yaml" in command, command



def security(path: Path) -> subprocess.CompletedProcess:
    # --threshold is on systemd's 0-100 scale: 30 = an overall exposure of 3.0 ("OK" ends at 4.9).
    return subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=30", "--no-pager", str(path)],
        capture_output=True, text=True, timeout=30, env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"),
    )


def test_sandbox_exposure_stays_low(staged):
    # `systemd-analyze security` scores the hardening (0 = locked down, 10 = none); 1.7 when written. Hardening
    # dropped by accident pushes it over the threshold and the command exits non-zero.
    path = staged()
    verify(path)  # skips/fails the same way when the tool is missing
    result = security(path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert re.search(r"Overall exposure level for baileys-supervisor\.service: [0-2]\.\d", result.stdout)
    weak = staged(lambda t: re.sub(r"(?m)^(Protect|Restrict|Private|SystemCall|Capability|NoNew)\w*=.*$", "", t))
    assert security(weak).returncode != 0  # the threshold does bite
