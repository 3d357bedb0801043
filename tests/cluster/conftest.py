"""One throwaway PostgreSQL server per test session (tests/pg.py), a fresh database per test, and a factory of
ClusterSettings pointed at it. Missing PostgreSQL binaries fail the test with a clear message (no skip)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from supervisor.settings import ClusterSettings
from tests.cluster.e2e_nodes import cluster_nodes, receiver, sim  # noqa: F401 - fixtures for the e2e files
from tests.pg import PgServer


@pytest.fixture(scope="session")
def pg_server():
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_dsn(pg_server) -> str:
    if not pg_server.port or pg_server._run("pg_ctl", "-D", str(pg_server.data), "status", check=False).returncode:
        pg_server.start()  # a test that stopped it and failed before restarting
    return pg_server.create_db()


# Fast but within the documented rule fence_after <= release_after / 2 (the loader enforces it).
FAST = dict(ping_interval=0.5, fence_after=4.0, release_after=10.0, claim_interval=0.3)


@pytest.fixture
def cluster_settings(pg_dsn):
    def make(node_id: str, **kw) -> ClusterSettings:
        return replace(ClusterSettings(dsn=pg_dsn, node_id=node_id, **FAST), **kw)

    return make


@pytest.fixture
def netns():
    from tests.cluster.netns import NetNs

    ns = NetNs()
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def pg_on_veth(netns):
    """A server of its own that also listens on the veth's root-side address (the session server listens on
    loopback only); stopped and removed after the test."""
    server = PgServer(extra_listen=(netns.host_ip,), trust_from=(f"{netns.ns_ip}/32",))
    try:
        server.start()
        yield server
    finally:
        server.destroy()
