"""The whole flow without a phone: the WhatsApp Web simulator, a real daemon on a temporary storage, its real
Baileys worker, the QR drawn in this terminal, a simulated phone scanning it, and the tenant reaching `connected`.

    make demo                      # interactive: press Enter to "scan" the QR
    .venv/bin/python scripts/demo.py --auto    # no keypress (CI / tests)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from e2e_harness import Daemon, Simulator, daemon_config, free_port  # noqa: E402

from supervisor.qr import terminal_text  # noqa: E402


def ask(prompt: str) -> None:
    """Wait for Enter; at end of input (`make demo < /dev/null`, a closed pipe, Ctrl-D) go on as --auto does."""
    try:
        input(prompt)
    except EOFError:
        print("\n(no input: going on without the keypress)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--auto", action="store_true", help="scan without waiting for a keypress")
    ap.add_argument("--tenant", default="1")
    ap.add_argument("--push-name", default="Demo Phone")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bsup-demo-") as tmp:
        work = Path(tmp)
        print(f"storage: {work / 'storage'}")
        sim = Simulator(log_path=work / "sim.log")
        daemon = Daemon(work, daemon_config(work / "storage", free_port(), sim.ws_url))
        try:
            print(f"simulator: {sim.ws_url} (control {sim.control})")
            daemon.start()
            print(f"daemon:    {daemon.url}  (try: curl {daemon.url}/whatsapp/{args.tenant}/status)")
            t0 = time.monotonic()
            daemon.start_tenant(args.tenant)
            daemon.wait_qr(args.tenant)
            st = daemon.status(args.tenant)
            print(f"\nPOST /whatsapp/{args.tenant}/start -> QR in {time.monotonic() - t0:.2f} s; "
                  f"status: connected={st['connected']} hasQR={st['hasQR']} state={st['state']}\n")
            print(terminal_text(daemon.qr(args.tenant)["qr"]))
            if not args.auto:
                ask("Press Enter to scan this QR with the simulated phone... ")
            qr = daemon.qr(args.tenant)["qr"]  # the QR shown *now* (it rotates), like a phone camera would see
            t_scan = time.monotonic()
            res = sim.scan(qr, pushName=args.push_name)
            if not res.get("ok"):
                print(f"scan failed: {res}", file=sys.stderr)
                return 1
            print(f"scanned: linked device {res['jid']}; the server ends the stream with 515 and the daemon restarts "
                  "the worker on its own...")
            st = daemon.wait_connected(args.tenant, timeout=60)
            print(f"\nconnected in {time.monotonic() - t_scan:.2f} s after the scan")
            print(json.dumps({k: st[k] for k in ("tenant", "state", "connected", "hasQR", "pushName", "me",
                                                 "restarts", "lastDisconnect", "auth")}, indent=2))
            files = sorted(p.name for p in (work / "storage" / "whatsapp" / args.tenant / "auth").iterdir())
            print(f"auth files: {len(files)} (creds.json present: {'creds.json' in files})")
            if not args.auto:
                ask("\nPress Enter to stop the daemon and the simulator... ")
            return 0
        finally:
            daemon.stop()
            sim.stop()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
