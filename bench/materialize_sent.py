"""Materialize with a big sent store (issue 13; docs/cluster.md "The decrypt journal and the sent store").

`StateStore.before_spawn` timed in this process, on a real PgOwnership node against a throwaway **durable**
PostgreSQL (tests/pg.py), for a tenant with the auth files of a first login (creds + 812 pre-keys + 40 sessions)
and 0, R/10 and R sent-store rows (realistic rows: the worker's JSON of a 40-1,500 character text, sent within 6
days; seeded straight into the store): the dir empty (a node that never had the tenant), everything present (the
same node again), 90% present (a returning node that missed some); the fenced read and the writing of `sent/` also
timed alone. Then R rows plus R past KEEP_MS (a worker up two weeks: it prunes only at its open) into an empty dir.
The takeover with such a store, real workers: `bench/cluster_state.py --kill N --sent-rows R`.

    PYTHONPATH=. .venv/bin/python bench/materialize_sent.py --sent-rows 10000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from e2e_latency import row  # noqa: E402
from supervisor.settings import ClusterSettings  # noqa: E402
from tests.pg import PgServer  # noqa: E402


def sent_rows(n: int, seed: int = 0, days: tuple[float, float] = (0, 6)) -> dict[str, bytes]:
    """n sent-store rows as the worker writes them (send.mjs: BufferJSON of {to, at, message}): a text message of
    40-1,500 characters (proto-encoded: text + ~40 bytes), sent between `days` ago (within the 7 days kept)."""
    rnd, now = random.Random(seed), time.time() * 1000
    out = {}
    for i in range(n):
        msg = rnd.randbytes(rnd.choice((40, 120, 300, 800, 1500)) + 40)
        body = {"to": f"1555{rnd.randrange(10**7):07d}@s.whatsapp.net",
                "at": int(now - rnd.uniform(*days) * 86400e3),
                "message": {"type": "Buffer", "data": base64.b64encode(msg).decode()}}
        key = f"sent/3EB{seed % 10}{i:06X}{rnd.getrandbits(48):012X}.json"
        out[key] = json.dumps(body, separators=(",", ":")).encode()
    return out


def auth_rows(seed: int = 0) -> dict[str, bytes]:
    """A tenant's stock auth files after its first login: creds, 812 pre-keys, some sessions and sender keys."""
    rnd = random.Random(seed)
    b = lambda k: base64.b64encode(rnd.randbytes(k)).decode()  # noqa: E731
    out = {"creds.json": json.dumps({"me": {"id": "1:2@s.whatsapp.net"}, "noise": b(600)}).encode()}
    for i in range(1, 813):
        out[f"pre-key-{i}.json"] = json.dumps({"private": b(32), "public": b(32)}).encode()
    for i in range(40):
        out[f"session-1555{i:07d}.0.json"] = json.dumps({"s": b(1200)}).encode()
    return out


def materialize_run(rows: int) -> str:
    """The module docstring's run: StateStore.before_spawn timed, in this process."""
    from supervisor import cluster_journal
    from supervisor.cluster.ownership import PgOwnership
    from supervisor.cluster.store import Fenced, get_kv
    from supervisor.cluster_state import StateStore

    async def timed(own: PgOwnership, tid: str, fn) -> float:
        """fn's time; a lease that lapsed on this loaded machine (ping > fence_after) is waited out and fn retried."""
        for _ in range(5):
            while tid not in own.owned or not own.fence.valid():
                await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            try:
                await fn()
                return time.perf_counter() - t0
            except (Fenced, OSError) as exc:
                print(f"retried after {type(exc).__name__}", file=sys.stderr)
        raise RuntimeError("fenced 5 times")

    async def seed(own: PgOwnership, tid: str, data: dict[str, bytes]) -> None:
        items = list(data.items())
        for i in range(0, len(items), 2000):  # straight into the store, as the worker's writes left it
            await timed(own, tid, lambda i=i: own.write_kv(tid, dict(items[i:i + 2000])))

    async def go(dsn: str, tmp: Path) -> list[str]:
        own = PgOwnership(ClusterSettings(dsn=dsn, node_id="m1"))
        await own.start()
        lines = []
        try:
            for n in sorted({0, rows // 10, rows}):
                tid = f"m{n}"
                await own.want(tid)
                data = {**auth_rows(), **sent_rows(n)}
                await seed(own, tid, data)
                mb = sum(len(v) for v in data.values()) / 1e6
                store, auth = StateStore(own), tmp / tid / "auth"
                res: dict[str, list[float]] = {"empty dir (fresh node)": [], "all present (same node again)": [],
                                               "90% of sent/ present": [], "  of which the fenced read": [],
                                               "  of which writing sent/ (empty dir)": []}
                files = [(k[len("sent/"):], v) for k, v in data.items() if k.startswith("sent/")]

                async def read() -> None:
                    async with own.fenced(tid) as cur:
                        await get_kv(cur, tid)

                for rep in range(3):
                    shutil.rmtree(auth.parent, ignore_errors=True)
                    for case in list(res)[:3]:
                        if case.startswith("90%") and n:
                            for p in sorted((auth / "sent").iterdir())[::10]:
                                p.unlink()
                        res[case].append(await timed(own, tid, lambda: store.before_spawn(tid, auth)))
                    res["  of which the fenced read"].append(await timed(own, tid, read))
                    d = tmp / f"w{n}-{rep}"
                    d.mkdir()
                    t0 = time.perf_counter()
                    await asyncio.to_thread(lambda: [cluster_journal._write(d / k, v, None) for k, v in files])
                    res["  of which writing sent/ (empty dir)"].append(time.perf_counter() - t0)
                    shutil.rmtree(d)
                for case, xs in res.items():
                    lines.append(row(f"{n:>6} sent rows ({mb:.1f} MB), {case}", xs))
            # a worker that ran two weeks: the same again past KEEP_MS (the worker prunes only at its open)
            tid, xs = "old", []
            await own.want(tid)
            await seed(own, tid, auth_rows())
            for rep in range(3):
                await seed(own, tid, {**sent_rows(rows, seed=1), **sent_rows(rows, seed=2, days=(7.5, 14))})
                shutil.rmtree(tmp / tid, ignore_errors=True)
                xs.append(await timed(own, tid, lambda: StateStore(own).before_spawn(tid, tmp / tid / "auth")))
            left = len(os.listdir(tmp / tid / "auth" / "sent"))
            lines.append(row(f"{rows} + {rows} past KEEP_MS, empty dir", xs) + f"  (sent files written: {left})")
        finally:
            await own.close(drain=False)
        return lines

    load0 = os.getloadavg()
    pg = PgServer(durable=True)
    try:
        pg.start()
        dsn = pg.create_db()
        with tempfile.TemporaryDirectory(prefix="bsup-bench-") as tmp:
            lines = asyncio.run(go(dsn, Path(tmp)))
    finally:
        pg.destroy()
    load1 = os.getloadavg()
    return "\n".join([f"# bench/materialize_sent.py --sent-rows {rows}  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  "
                      f"loadavg before {load0[0]:.2f}/{load0[1]:.2f}, after {load1[0]:.2f}/{load1[1]:.2f}",
                      "StateStore.before_spawn (fenced read + files), 3 runs each; plus 812 pre-keys, 40 sessions:",
                      *lines])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sent-rows", type=int, default=10000, metavar="R", help="sent-store rows of the biggest tenant")
    print(materialize_run(ap.parse_args().sent_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
