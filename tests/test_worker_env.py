"""The environment a worker gets: the protocol variables, the glibc malloc tuning by default, and who overrides it."""

from __future__ import annotations

from pathlib import Path

from supervisor.settings import WORKER_MALLOC_ENV, WorkerSettings
from supervisor.worker import worker_env


def test_malloc_tuning_is_the_default_and_worker_env_or_the_daemons_environment_override_it(monkeypatch, tmp_path):
    for key in WORKER_MALLOC_ENV:
        monkeypatch.delenv(key, raising=False)
    env = worker_env(WorkerSettings(), "t", tmp_path / "auth", 7)
    assert {k: env[k] for k in WORKER_MALLOC_ENV} == WORKER_MALLOC_ENV
    assert env["BSUP_TENANT"] == "t" and env["BSUP_LOCK_FD"] == "7" and "BSUP_STANDBY" not in env

    env = worker_env(WorkerSettings(env={"MALLOC_ARENA_MAX": "4"}), "t", tmp_path / "auth", 7, standby=True)
    assert env["MALLOC_ARENA_MAX"] == "4" and env["BSUP_STANDBY"] == "1"

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # e.g. systemd Environment= for the whole service
    assert worker_env(WorkerSettings(), "t", Path("/x/auth"), 7)["MALLOC_ARENA_MAX"] == "2"


def test_the_shipped_command_has_the_memory_flags():
    cmd = WorkerSettings().command
    assert cmd[0] == "node" and cmd[-1].endswith("node_worker/src/worker.mjs")
    assert {"--max-semi-space-size=1", "--v8-pool-size=1", "--optimize-for-size", "--expose-gc"} <= set(cmd)
