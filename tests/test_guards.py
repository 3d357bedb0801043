"""Guards whose removal no other test noticed (mutation testing): `restart_tenant` once shutdown has begun, and
run_daemon's refusal to serve a secret-less API on a non-loopback address (settings that bypassed the config file's
own check, e.g. built in code)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from conftest import live_workers, spawn_records, wait_until
from supervisor.daemon import Supervisor
from supervisor.errors import ConfigError, ShuttingDown
from supervisor.runner import run_daemon


async def test_restart_during_shutdown_is_refused_and_spawns_nothing(make_settings, fake_state, marker):
    sup = Supervisor(make_settings())
    await sup.start_tenant("t")
    await wait_until(lambda: len(spawn_records(fake_state)) == 1)
    down = asyncio.create_task(sup.shutdown())
    await wait_until(lambda: sup.shutting_down, interval=0)
    with pytest.raises(ShuttingDown):
        await sup.restart_tenant("t")  # while the shutdown is under way
    await down
    with pytest.raises(ShuttingDown):
        await sup.restart_tenant("t")  # and after it
    assert live_workers(marker) == {}
    assert len(spawn_records(fake_state)) == 1  # the refused restarts started no worker


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "example.org"])
async def test_non_loopback_api_without_secret_is_refused_before_anything_starts(make_settings, marker, host):
    settings = make_settings(boot=("b",))
    settings = replace(settings, api=replace(settings.api, host=host, secret=None))
    with pytest.raises(ConfigError, match="without an API secret"):
        await asyncio.wait_for(run_daemon(settings, shutdown_event=asyncio.Event()), 30)
    assert live_workers(marker) == {}  # refused before the boot tenant got a worker


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost"])
async def test_loopback_api_without_secret_is_served(make_settings, host):
    settings = make_settings()
    settings = replace(settings, api=replace(settings.api, host=host, secret=None))
    stop = asyncio.Event()
    stop.set()  # start up, then shut down at once: this test is about being allowed to start
    await asyncio.wait_for(run_daemon(settings, shutdown_event=stop), 30)
