"""Fixtures of the real-worker cluster tests (three daemons at most, real Baileys workers, the WhatsApp Web
simulator, one real PostgreSQL): the simulator, a webhook receiver, and a factory of cluster daemons with separate
storage roots. Imported by tests/cluster/conftest.py, so every test under tests/cluster/ can ask for them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import kill_marked
from tests.e2e.e2e_harness import WAIT, Daemon, Simulator, daemon_config, free_port
from tests.e2e.msg_support import Receiver

# Fast, within the loader's rules (fence_after <= release_after / 2, ping_interval <= fence_after / 2)
E2E_CLUSTER = {"ping_interval": 0.5, "fence_after": 4, "release_after": 10, "claim_interval": 0.3}


@pytest.fixture
def sim(tmp_path):
    s = Simulator(log_path=tmp_path / "sim.log")
    yield s
    s.stop()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def cluster_nodes(pg_dsn, tmp_path, marker):
    """make(name, sim_url, webhook_url=None, env=None, advertise=False, **daemon_config kwargs) -> a started Daemon
    (node id `name`, worker marker `<marker>-<name>`); all stopped and their workers killed at the end."""
    made: dict[str, Daemon] = {}

    def make(name: str, sim_url: str, *, webhook_url: str | None = None, env: dict[str, str] | None = None,
             advertise: bool = False, **kw: Any) -> Daemon:
        port = free_port()
        cfg = daemon_config(tmp_path / f"storage-{name}", port, sim_url, marker=f"{marker}-{name}",
                            worker={"env": env or {}}, **kw)
        cfg["cluster"] = {"backend": "postgres", "dsn": pg_dsn, "node_id": name, **E2E_CLUSTER}
        if advertise:
            cfg["cluster"]["advertise_url"] = f"http://127.0.0.1:{port}"
        if webhook_url:
            cfg["webhook"] = {"url": webhook_url, "secret": "", "initial_delay": 0.05, "max_delay": 0.3,
                              "jitter": 0.0}
        made[name] = Daemon(tmp_path / f"node-{name}", cfg).start(timeout=2 * WAIT)
        return made[name]

    try:
        yield make
    finally:
        for d in made.values():
            d.stop()
        for n in made:
            kill_marked(f"{marker}-{n}")
