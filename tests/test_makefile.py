"""The README's two set-up commands: `make run` installs the runtime packages only, `make test` adds the test extras
(checked with `make -n` against a throwaway venv path: nothing is installed)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from supervisor.settings import PROJECT_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(target: str, tmp_path) -> str:
    # Under `make test` (CI) MAKELEVEL/MAKEFLAGS come from the outer make: a sub-make would then print
    # "make[1]: Leaving directory ..." after the commands and pass on the outer command-line variables.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(["make", "--no-print-directory", "-n", target, f"VENV={tmp_path / 'venv'}"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_run_installs_only_the_runtime_packages(tmp_path):
    text = dry_run("run", tmp_path)
    assert "pip install --quiet -e .\n" in text and "[test]" not in text
    assert "python3-venv" in text  # a missing venv module is named, not a bare ensurepip traceback
    assert text.rstrip().endswith("run --config config/baileys-supervisor.yaml")


@pytest.mark.parametrize("target", ["test", "test-py"])
def test_make_test_adds_the_test_extras(tmp_path, target):
    assert "pip install --quiet -e '.[test]'" in dry_run(target, tmp_path)
