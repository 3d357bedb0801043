"""`make demo` without the keypress: the newcomer's flow must actually reach connected."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .e2e_harness import ROOT

pytestmark = pytest.mark.e2e


def test_demo_reaches_connected_and_survives_the_end_of_input():
    """Without --auto but with stdin at EOF (`make demo < /dev/null`, CI): both prompts go on instead of crashing
    with EOFError (the same flow as --auto, which skips the prompts)."""
    env = {k: v for k, v in os.environ.items() if k != "INTERNAL_SECRET"}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=90, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "▀" in out.stdout  # the QR was drawn in the terminal
    assert "connected=False hasQR=True state=qr" in out.stdout  # the seed's "before the scan"
    assert '"connected": true' in out.stdout
    assert '"code": 515' in out.stdout and "creds.json present: True" in out.stdout
    assert out.stdout.count("(no input: going on without the keypress)") == 2 and "EOFError" not in out.stderr
