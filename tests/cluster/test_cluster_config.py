"""The `cluster:` config section (supervisor/config_cluster.py) and the promise that the single-host default never
imports psycopg. No server needed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from supervisor.config import settings_from_dict
from supervisor.errors import ConfigError
from tests.pg import PgServer  # noqa: F401 - importable without a server


def load(tmp_path, cluster):
    return settings_from_dict({"cluster": cluster}, tmp_path / "c.yaml").cluster


def test_absent_is_single_host(tmp_path):
    assert settings_from_dict({}, tmp_path / "c.yaml").cluster is None


def test_full_section(tmp_path, monkeypatch):
    cs = load(tmp_path, {"backend": "postgres", "dsn": "host=db user=bsup password=pw", "node_id": "node-1.a",
                         "advertise_url": "http://10.0.0.5:3300", "max_tenants": 300, "fence_after": 3,
                         "release_after": 8, "ping_interval": 1})
    assert (cs.node_id, cs.max_tenants, cs.fence_after, cs.release_after) == ("node-1.a", 300, 3.0, 8.0)
    assert "pw" not in repr(cs)  # the DSN may hold a password: never in a repr (logs)


def test_dsn_sources_and_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("BSUP_CLUSTER_DSN", "host=from-env")
    assert load(tmp_path, {"backend": "postgres"}).dsn == "host=from-env"
    monkeypatch.setenv("MY_DSN", "host=mine")
    assert load(tmp_path, {"backend": "postgres", "dsn_env": "MY_DSN"}).dsn == "host=mine"
    f = tmp_path / "dsn"
    f.write_text("host=from-file\n")
    assert load(tmp_path, {"backend": "postgres", "dsn_file": str(f)}).dsn == "host=from-file"
    assert load(tmp_path, {"backend": "postgres", "dsn": "host=x", "dsn_file": str(f)}).dsn == "host=x"


def test_node_id_defaults_to_host_name(tmp_path):
    cs = load(tmp_path, {"backend": "postgres", "dsn": "host=x"})
    assert cs.node_id and "." not in cs.node_id


@pytest.mark.parametrize("cluster, key", [
    ({"dsn": "host=x"}, "cluster.backend"),
    ({"backend": "etcd", "dsn": "host=x"}, "cluster.backend"),
    ({"backend": "postgres", "dsn": "host=x", "nope": 1}, "cluster.nope"),
    ({"backend": "postgres", "dsn": "host=x", "node_id": "a b"}, "cluster.node_id"),
    ({"backend": "postgres", "dsn": "host=x", "max_tenants": 0}, "cluster.max_tenants"),
    ({"backend": "postgres", "dsn": "host=x", "advertise_url": "ftp://x"}, "cluster.advertise_url"),
    # the fence must come well before the server's release: fence_after <= release_after / 2
    ({"backend": "postgres", "dsn": "host=x", "fence_after": 6, "release_after": 10}, "cluster.fence_after"),
    ({"backend": "postgres", "dsn": "host=x", "ping_interval": 3}, "cluster.ping_interval"),
    ({"backend": "postgres", "dsn": ""}, "cluster.dsn"),
    ({"backend": "postgres", "dsn_env": "UNSET_DSN_VAR_X"}, "cluster.dsn"),
    ({"backend": "postgres", "dsn_file": "/nonexistent/dsn"}, "cluster.dsn_file"),
])
def test_bad_values_name_the_key(tmp_path, cluster, key):
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, cluster)
    assert ei.value.details["key"] == key
    assert "secret-pw" not in str(ei.value)


def test_dsn_never_in_errors(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, {"backend": "postgres", "dsn": "host=x password=secret-pw", "fence_after": 9})
    assert "secret-pw" not in str(ei.value)


def test_single_host_path_does_not_import_psycopg():
    code = ("import sys; from supervisor.config import load_settings; import supervisor.daemon, supervisor.runner; "
            "from supervisor.cluster import make_ownership; from supervisor.settings import Settings; "
            "o = make_ownership(Settings()); assert o.backend == 'local', o; "
            "assert not [m for m in sys.modules if m.startswith('psycopg')], 'psycopg imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_db_upgrade_command(tmp_path, pg_dsn):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cluster: {{backend: postgres, dsn: '{pg_dsn}', node_id: n1}}\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "supervisor", "db", *a, "--config", str(cfg), "--json"],
                                    capture_output=True, text=True, timeout=60)
    first = run("status")
    assert first.returncode == 0, first.stderr
    assert '"schemaVersion": 0' in first.stdout
    import json

    from supervisor.cluster.schema import LATEST

    up = run("upgrade")
    assert up.returncode == 0 and json.loads(up.stdout)["applied"] == list(range(1, LATEST + 1)), up.stdout + up.stderr
    again = run("upgrade")
    assert again.returncode == 0 and json.loads(again.stdout)["applied"] == []
    assert json.loads(again.stdout)["schemaVersion"] == LATEST
    cfg.write_text("cluster: {backend: postgres, dsn: 'host=127.0.0.1 port=1 user=x password=secret-pw'}\n")
    down = run("status")
    assert down.returncode == 3 and "db_unreachable" in down.stdout and "secret-pw" not in down.stdout + down.stderr


async def test_doctor_checks(cluster_settings):
    import asyncio

    from supervisor.cluster.checks import cluster_checks
    from supervisor.cluster.ownership import PgOwnership

    cs = cluster_settings("n1")
    verdicts = lambda: {c.name: c.verdict for c in cluster_checks(cs)}
    assert (await asyncio.to_thread(verdicts)) == {"cluster.database": "pass", "cluster.schema": "warn"}
    node = PgOwnership(cs)
    await node.start()
    try:
        await node.want("t1")
        got = await asyncio.to_thread(cluster_checks, cs)
        v = {c.name: c.verdict for c in got}
        assert v == {"cluster.database": "pass", "cluster.schema": "pass", "cluster.node": "pass",
                     "cluster.tenants": v["cluster.tenants"], "cluster.locks": "pass",
                     "cluster.session_settings": "pass"}, got
    finally:
        await node.close(drain=False)
    after = {c.name: c for c in await asyncio.to_thread(cluster_checks, cs)}
    assert after["cluster.node"].verdict == "warn" and after["cluster.tenants"].verdict == "warn"  # t1: no live owner
    from dataclasses import replace
    down = await asyncio.to_thread(cluster_checks, replace(cs, dsn="host=127.0.0.1 port=1 user=x password=pw-x"))
    assert [c.verdict for c in down] == ["fail"] and "pw-x" not in down[0].detail
