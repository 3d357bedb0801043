"""Helpers for tests that run cluster nodes as processes (tests/cluster/node_proc.py): start, read events, check
the store for stale commits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

NODE_PROC = Path(__file__).resolve().parent / "node_proc.py"


class NodeProc:
    def __init__(self, dsn: str, node: str, tmp: Path, *args: str, prefix: tuple[str, ...] = ()) -> None:
        self.node = node
        self.events_path = tmp / f"{node}.events.jsonl"
        self.log = open(tmp / f"{node}.log", "ab")
        cmd = [*prefix, sys.executable, str(NODE_PROC), "--dsn", dsn, "--node", node, "--events",
               str(self.events_path), *args]
        env = {**os.environ, "PYTHONPATH": str(NODE_PROC.parents[2])}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def events(self, kind: str | None = None) -> list[dict]:
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a line being written
            if kind is None or e["ev"] == kind:
                out.append(e)
        return out

    def wait_event(self, kind: str, timeout: float, pred=lambda e: True) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for e in self.events(kind):
                if pred(e):
                    return e
            if self.proc.poll() is not None:
                raise AssertionError(f"node {self.node} exited {self.proc.returncode} waiting for {kind}")
            time.sleep(0.05)
        raise AssertionError(f"node {self.node}: no {kind} event within {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()


def create_test_writes(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS test_writes (id bigserial PRIMARY KEY, tenant_id text, epoch bigint, "
                  "node text, at timestamptz DEFAULT clock_timestamp())")


def stale_commits(dsn: str, table: str = "test_writes", writer: str | None = "node") -> tuple[int, int, int]:
    """(writes committed to `table`, writes committed after the next epoch's bump, writes by a node that did not
    hold that epoch: with no `writer` column, writes at an epoch nobody claimed). The last two must be 0:
    track_commit_timestamp orders the commits. `table` has (tenant_id, epoch[, writer]) per committed write."""
    foreign_if = f"o.owner IS DISTINCT FROM w.{writer}" if writer else "o.owner IS NULL"
    with psycopg.connect(dsn) as c:
        total = c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        late = c.execute(
            f"SELECT count(*) FROM {table} w JOIN tenant_epoch n ON n.tenant_id = w.tenant_id "
            "AND n.epoch = w.epoch + 1 WHERE pg_xact_commit_timestamp(w.xmin) > pg_xact_commit_timestamp(n.xmin)"
        ).fetchone()[0]
        foreign = c.execute(
            f"SELECT count(*) FROM {table} w LEFT JOIN tenant_epoch o ON o.tenant_id = w.tenant_id "
            f"AND o.epoch = w.epoch WHERE {foreign_if}").fetchone()[0]
    return total, late, foreign


def owners(dsn: str) -> dict[str, tuple[str | None, int]]:
    with psycopg.connect(dsn) as c:
        return {t: (o, e) for t, o, e in c.execute("SELECT tenant_id, owner, epoch FROM tenant_owner")}


def want(dsn: str, tids: list[str]) -> None:
    """Tenants started (as an operator's start on any node would do); the schema must exist (a node started)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("INSERT INTO tenant_owner (tenant_id) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (tids,))


def live_workers(node: NodeProc) -> dict[str, int]:
    """tenant -> stand-in worker pid, from the node's gain/lose events (a fence kills them all)."""
    cur: dict[str, int] = {}
    for e in node.events():
        if e["ev"] == "gain":
            cur[e["tenant"]] = e["pid"]
        elif e["ev"] == "lose":
            cur.pop(e["tenant"], None)
        elif e["ev"] == "fence":
            cur.clear()
    return cur


def settled(dsn: str, nodes: list[NodeProc]) -> bool:
    """Every tenant owned, and each node's workers are exactly its tenants in the store (no hand-off in flight)."""
    own = owners(dsn)
    if not own or any(o is None for o, _ in own.values()):
        return False
    return all(set(live_workers(n)) == {t for t, (o, _) in own.items() if o == n.node} for n in nodes)
