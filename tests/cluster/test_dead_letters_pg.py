"""Cluster mode: a dead letter requeued through ANOTHER node (real PostgreSQL, real forwarder and target) is delivered
by the tenant's owner, which learns of it only through its rescan (no put, no gain wakes it)."""

from __future__ import annotations

from supervisor.cluster.spool import PgSpool
from supervisor.settings import WebhookSettings
from supervisor.webhook import RESCAN, WebhookForwarder
from tests.cluster.test_spool_pg import _setup_db
from tests.cluster.test_spool_pg_forwarder import msg, target, until  # noqa: F401 - target is a fixture


async def test_a_requeue_on_another_node_is_delivered_by_the_owner(pg_dsn, cluster_settings, target):  # noqa: F811
    _setup_db(pg_dsn)  # n1 owns t, u, v at epoch 1
    epochs = {"t": 1}
    fw = WebhookForwarder(WebhookSettings(url=target["url"], initial_delay=0.02, max_delay=0.1, jitter=0.0),
                          spool=PgSpool(cluster_settings("n1"), epochs.get), owns=lambda t: t in epochs,
                          owned=lambda: list(epochs))
    await fw.start()
    other = PgSpool(cluster_settings("n2"), lambda t: None)  # node n2: owns nothing, puts nothing
    try:
        # A dead letter as n1's forwarder left it (the target refused it), made directly in the shared table.
        owner_side = PgSpool(cluster_settings("n1"), epochs.get)
        item, _ = owner_side.put("t", '{"type":"message","n":7}', 1.0, event_id="ev-7")
        owner_side.dead_letter(item, 422, 1, 2.0)
        owner_side.close()
        target["up"] = True
        [d] = other.dead_letters()  # any node lists them: the rows are shared
        assert (d["tenant"], d["event_id"]) == ("t", "ev-7")
        out = other.requeue(d["key"])
        assert out["requeued"] and out["tenant"] == "t"
        await until(lambda: target["got"], timeout=10 * RESCAN + 30)
        assert [g["payload"]["n"] for g in target["got"]] == [7]
        await until(lambda: fw.depth == 0 or not other.next_items("t"), timeout=30)
        assert other.next_items("t") == [] and other.dead_letters() == []
    finally:
        other.close()
        await fw.aclose()
