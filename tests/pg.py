"""A throwaway PostgreSQL server for tests (docs/cluster.md, ../shared notes: postgres-ownership.md).

`initdb` into a temporary directory owned by `postgres`, `pg_ctl start` through `runuser -u postgres --` (root cannot
run postgres), listening on 127.0.0.1 (plus any extra address given, e.g. a veth end) on a port below 32768 (the
ephemeral range starts there: a random port above it clashed), retried on a clash. Nothing global is touched; `stop()`
removes the directory. Missing binaries are an error with a clear message, never a skip: CI installs them.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


class PgMissing(RuntimeError):
    pass


def pg_bin() -> Path:
    dirs = sorted((d for d in glob.glob(PG_BIN_GLOB) if os.path.exists(os.path.join(d, "initdb"))),
                  key=lambda d: [int(x) for x in Path(d).parent.name.split(".") if x.isdigit()])
    if not dirs:
        raise PgMissing(f"PostgreSQL server binaries not found ({PG_BIN_GLOB}/initdb): "
                        "apt-get install postgresql (.ci/run does this in CI)")
    if shutil.which("runuser") is None:
        raise PgMissing("runuser not found (util-linux): needed to run postgres as the postgres user")
    return Path(dirs[-1])


# Server-side keepalives for every session (the client also sets them per session): a silent peer is dropped after
# ~11 s instead of the kernel's ~2 h. track_commit_timestamp lets tests check the commit order of fenced writes.
FAST_OPTS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "  # tests only; benches stay durable
SERVER_OPTS = ("-c track_commit_timestamp=on -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 "
               "-c tcp_keepalives_count=3 -c tcp_user_timeout=10000")


class PgServer:
    def __init__(self, extra_listen: tuple[str, ...] = (), trust_from: tuple[str, ...] = (),
                 durable: bool = False) -> None:
        self.opts = SERVER_OPTS if durable else FAST_OPTS + SERVER_OPTS
        self.bin = pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="bsup-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.listen = ",".join(("127.0.0.1", *extra_listen))
        self.port = 0
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        with open(self.data / "pg_hba.conf", "a") as hba:  # initdb trusts only loopback clients
            for cidr in trust_from:
                hba.write(f"host all all {cidr} trust\n")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / tool), *args],
                              capture_output=True, text=True, timeout=120, check=check, cwd=self.dir)

    def start(self) -> None:
        """Start on the current port, or on a fresh random one below 32768 (up to 8 tries on a clash)."""
        ports = [self.port] if self.port else [random.randrange(20000, 32000) for _ in range(8)]
        last = ""
        for port in ports:
            r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                          f"-c listen_addresses={self.listen} -p {port} -k {self.dir} {self.opts}", "start",
                          check=False)
            if r.returncode == 0:
                self.port = port
                return
            last = r.stderr + self.log.read_text(errors="replace")[-2000:] if self.log.exists() else r.stderr
        raise RuntimeError(f"PostgreSQL did not start: {last}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"host={host} port={self.port} user=postgres dbname={dbname}"

    def create_db(self) -> str:
        """A fresh database (one per test); returns its DSN."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)
