"""SIGHUP in cluster mode: the `cluster:` section is set up at start (node lock, connections, lease), so a changed
section is reported as not applied and the old one stays in force (supervisor/reload.py)."""

from __future__ import annotations

from dataclasses import replace

from supervisor.reload import effective, plan_reload
from supervisor.settings import ClusterSettings, Settings


def test_changed_cluster_section_is_not_applied_live():
    old = Settings(cluster=ClusterSettings(dsn="host=x", node_id="a"))
    new = replace(old, cluster=ClusterSettings(dsn="host=y", node_id="b"))
    plan = plan_reload(old, new, set())
    assert plan.changed == ["cluster"] and plan.not_applied == ["cluster"]
    assert effective(old, new).cluster == old.cluster
    assert plan_reload(old, old, set()).changed == []
