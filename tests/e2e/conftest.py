"""Fixtures for the end-to-end tests: a WhatsApp Web simulator per test and a factory of real daemons
(`baileys-supervisor run` subprocesses) whose workers are the real node_worker with real Baileys, pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .e2e_harness import Daemon, Simulator, daemon_config, free_port
from .msg_support import Receiver


@pytest.fixture
def make_sim(tmp_path: Path) -> Iterator[Callable[..., Simulator]]:
    sims: list[Simulator] = []

    def factory(*args: str) -> Simulator:
        sim = Simulator(*args, log_path=tmp_path / f"sim-{len(sims)}.log")
        sims.append(sim)
        return sim

    yield factory
    for sim in sims:
        sim.stop()


@pytest.fixture
def sim(make_sim: Callable[..., Simulator]) -> Simulator:
    return make_sim()


@pytest.fixture
def make_daemon(tmp_path: Path, marker: str) -> Iterator[Callable[..., Daemon]]:
    """make_daemon(sim, **daemon_config kwargs) -> a started Daemon on this test's storage. Its workers carry the
    test's marker in argv, so the root conftest's leak check covers them too."""
    daemons: list[Daemon] = []

    def factory(sim: Simulator, *, start: bool = True, **kw: Any) -> Daemon:
        workdir = tmp_path / f"daemon{len(daemons)}"
        workdir.mkdir()
        storage = kw.pop("storage", tmp_path / "storage")
        cfg = daemon_config(storage, free_port(), sim.ws_url, marker=marker, **kw)
        d = Daemon(workdir, cfg)
        daemons.append(d)
        if start:
            d.start()
        return d

    yield factory
    for d in daemons:
        d.stop()
    # Leftover workers are caught by the root conftest's autouse leak check (it finds them by the marker).


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    return tmp_path / "storage"



@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local HTTP server playing the web app's webhook (msg_support.Receiver)."""
    r = Receiver()
    yield r
    r.stop()
