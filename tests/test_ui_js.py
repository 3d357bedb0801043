"""The console's JavaScript helpers under Node's test runner (tests/ui_js/texts.test.mjs), fed the doctor.json the daemon serves."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from supervisor.ui_routes import doctor_texts

JS_TESTS = Path(__file__).with_name("ui_js") / "texts.test.mjs"


def test_texts_js(tmp_path: Path) -> None:
    texts = tmp_path / "doctor.json"
    texts.write_text(json.dumps(doctor_texts()))
    out = subprocess.run(["node", "--test", str(JS_TESTS)], capture_output=True, text=True, timeout=120,
                         env={"PATH": os.environ["PATH"], "BSUP_DOCTOR_JSON": str(texts)})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "# fail 0" in out.stdout and "# pass 6" in out.stdout, out.stdout[-2000:]
