"""A private SQLite file that one daemon owns: the webhook spool and the send outbox.

One open: 0700 parent, a flock'ed side file (`<db>.lock`; SQLite's own locks are fcntl locks on the db, which flock
does not interfere with; it belongs to this open file description, so a SIGKILLed owner releases it at once), the
database and its -wal/-shm 0600 whatever the umask (SQLite gives -wal/-shm the mode of the database file, so that is
created or fixed first), WAL with synchronous=FULL (each commit is fsynced: a commit is a promise to the caller),
autocommit (multi-statement changes use explicit BEGIN IMMEDIATE).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

from supervisor.storage import create_private_file, make_private_dir


class PrivateDb:
    def __init__(self, path: Path, what: str, *, error: type[Exception], locked: type[Exception]) -> None:
        self.path, self.what, self._error, self._locked = path, what, error, locked
        self.conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    def open(self, schema: str) -> sqlite3.Connection:
        make_private_dir(self.path.parent, tighten=0)  # created 0700; an existing storage root is the operator's
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._locked(f"{self.what} {self.path} is in use by another process", path=str(self.path))
        self._lock_fd = fd
        try:
            for suffix in ("", "-wal", "-shm"):
                if suffix == "" or os.path.lexists(f"{self.path}{suffix}"):
                    create_private_file(Path(f"{self.path}{suffix}"))
            db = self.conn = sqlite3.connect(self.path, isolation_level=None)
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise self._error(f"{self.what} {self.path}: WAL not available (journal_mode={mode})")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(schema)
            return db
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
