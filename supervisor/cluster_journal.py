"""Cluster mode: the decrypt journal and the sent store in the fenced store (docs/cluster.md "The decrypt journal and
the sent store"). Used by cluster_state.py before a spawn; pure file work (run in a thread).

Store keys (rows of `tenant_kv`, next to the stock auth files):
- `journal/<hash>.json`: one unacked journal entry, the JSON of the worker's *legacy* per-file layout. The worker
  commits it (through the daemon, fenced) before its decrypt returns and deletes it on the daemon's `ack`
  (node_worker/src/journal.mjs). Materialize writes the rows as `<auth>/journal/<hash>.json`; the worker's
  openJournal migrates them into its log and re-emits the unacked ones (`recovered: true`).
- `sent/<waId>.json`: what the worker sent (its `getMessage` answers retry receipts from it), written as
  `<auth>/sent/<waId>.json` with the entry's `at` as mtime (the worker prunes by mtime after KEEP_MS, at its open
  only); rows already past KEEP_MS are deleted (fenced) at materialize instead (`expired_sent`).

The store is the truth for the journal: a local journal that holds an unacked entry the store does not have (another
node delivered and acked it meanwhile, or this node died before that entry's commit: then no receipt went out and
WhatsApp delivers it again) is moved aside to `auth.aside-<UTC>/journal/`, never deleted, so a returning node does not
re-emit what another node delivered. A local journal consistent with the store is kept (its tombstones answer a
redelivered stanza). Local sent files the store lacks are kept (they only answer retries)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

JOURNAL, SENT = "journal/", "sent/"
# = send.mjs KEEP_MS (tests/cluster/test_materialize.py checks they agree): the worker removes a sent file older than
# this (by its mtime, which materialize sets from the entry's `at`) at its open, and its row with it.
SENT_KEEP_S = 7 * 24 * 3600
_SEG = re.compile(r"^seg-(\d+)\.log$")
_HEADER = re.compile(rb"(\d+) ([0-9a-f]{16}) ")


def decode_segment(buf: bytes) -> list[dict[str, Any]]:
    """The intact records of a journal segment (node_worker/src/journal-log.mjs: `<len> <sha256 16> <json>\\n`),
    up to the first torn one."""
    out, off = [], 0
    while off < len(buf):
        nl = buf.find(b"\n", off)
        m = _HEADER.match(buf, off, min(nl, off + 40)) if nl >= 0 else None
        if m is None:
            break
        body = buf[m.end():nl]
        if len(body) != int(m.group(1)) or hashlib.sha256(body).hexdigest()[:16] != m.group(2).decode():
            break
        try:
            out.append(json.loads(body))
        except ValueError:
            break
        off = nl + 1
    return out


def local_journal(jdir: Path) -> dict[str, dict[str, Any]]:
    """hash -> live record of a local journal dir (segments oldest first, then legacy files); an ack is final."""
    live: dict[str, dict[str, Any]] = {}

    def load(rec: Any) -> None:
        if isinstance(rec, dict) and isinstance(rec.get("hash"), str):
            if live.get(rec["hash"], {}).get("acked") and not rec.get("acked"):
                return
            live[rec["hash"]] = rec

    if not jdir.is_dir():
        return live
    names = sorted(os.listdir(jdir))
    for name in sorted((n for n in names if _SEG.match(n)), key=lambda n: int(_SEG.match(n).group(1))):  # type: ignore[union-attr]
        for rec in decode_segment((jdir / name).read_bytes()):
            load(rec)
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            try:
                load(json.loads((jdir / name).read_bytes()))
            except (OSError, ValueError):
                continue  # foreign: the worker leaves it alone too
    return live


def import_rows(auth_dir: Path) -> dict[str, bytes]:
    """A single-host dir's unacked journal entries and sent files as store rows (the first claim after an upgrade,
    and `db import`)."""
    rows = {f"{JOURNAL}{h}.json": json.dumps(r, separators=(",", ":")).encode()
            for h, r in local_journal(auth_dir / "journal").items() if not r.get("acked")}
    sdir = auth_dir / "sent"
    if sdir.is_dir():
        with os.scandir(sdir) as it:
            for e in it:
                if e.name.endswith(".json") and not e.name.startswith(".") and e.is_file(follow_symlinks=False):
                    rows[f"{SENT}{e.name}"] = Path(e.path).read_bytes()
    return rows


def _write(path: Path, data: bytes, mtime: float | None = None) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-0"  # the worker's temp pattern: removed at its next open
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


def sent_at(data: bytes) -> float | None:
    """A sent row's `at` (ms since the epoch), or None when it has none."""
    try:
        at = json.loads(data)["at"]
        return float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None
    except (ValueError, KeyError, TypeError):
        return None


def expired_sent(rows: dict[str, bytes], now_ms: float) -> tuple[list[str], dict[str, float | None]]:
    """(the sent rows the worker would remove at its open: older than SENT_KEEP_S, the `at` of every sent row). A
    worker prunes only at its open, so one that ran for weeks leaves weeks of rows: materialize deletes those in its
    own fenced transaction instead of writing files the next worker deletes again (each delete a store write too)."""
    ats = {k: sent_at(v) for k, v in rows.items() if k.startswith(SENT)}
    return [k for k, at in ats.items() if at is not None and now_ms - at > SENT_KEEP_S * 1000], ats


def materialize(auth_dir: Path, rows: dict[str, bytes], ats: dict[str, float | None] | None = None) -> dict[str, int]:
    """Make `<auth>/journal` and `<auth>/sent` agree with the store's `journal/` and `sent/` rows (see the module
    doc; `ats`: the sent rows' `at`, from expired_sent). Returns counts for the log line."""
    jdir, sdir = auth_dir / "journal", auth_dir / "sent"
    journal = {k[len(JOURNAL):]: v for k, v in rows.items() if k.startswith(JOURNAL)}
    live = local_journal(jdir)
    stored = {name[:-5] for name in journal}
    moved = 0
    if any(not r.get("acked") and h not in stored for h, r in live.items()):
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = auth_dir.parent / f"auth.aside-{stamp}" / "journal"
        aside.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in os.listdir(jdir):
            if _SEG.match(name) or (name.endswith(".json") and not name.startswith(".")):
                os.replace(jdir / name, aside / name)
                moved += 1
        live = {}
    written = 0
    if journal:
        jdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, data in journal.items():
        rec = live.get(name[:-5])
        if rec is not None and not rec.get("acked"):
            continue  # the local log has it unacked already
        _write(jdir / name, data)  # new here, or acked here (a lost delete: the worker deletes the row again)
        written += 1
    sent = 0
    for key, data in rows.items():
        if not key.startswith(SENT):
            continue
        path = sdir / key[len(SENT):]
        if sent == 0:
            sdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            if path.read_bytes() == data:
                continue
        except OSError:
            pass
        at = sent_at(data) if ats is None else ats.get(key)
        _write(path, data, None if at is None else at / 1000)
        sent += 1
    return {"journal_rows": len(journal), "journal_written": written, "journal_moved_aside": moved,
            "sent_written": sent}
