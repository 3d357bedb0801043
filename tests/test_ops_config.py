"""The `webhook:` config section: defaults, strictness, spool path relative to storage, secret default."""

from __future__ import annotations

import pytest

from supervisor.config import settings_from_dict
from supervisor.errors import ConfigError
from supervisor.reload import plan_reload


def test_webhook_defaults_and_resolution(tmp_path):
    s = settings_from_dict({"storage": {"root": "st"}, "api": {"secret": "s3"},
                            "webhook": {"url": "http://127.0.0.1:1/x", "spool_path": "q/h.db"}}, tmp_path / "c.yaml")
    assert s.webhook.secret == "s3" and s.webhook.spool_path == tmp_path / "st" / "q" / "h.db"
    assert settings_from_dict({"webhook": {"url": "http://h/x", "secret": ""}}).webhook.secret is None
    assert settings_from_dict({}).webhook.url is None


@pytest.mark.parametrize("bad,key", [({"url": "ftp://x"}, "webhook.url"), ({"timeout": 0}, "webhook.timeout"),
                                     ({"max_items": 0}, "webhook.max_items"), ({"urll": "x"}, "webhook.urll"),
                                     ({"jitter": 1}, "webhook.jitter"),
                                     ({"initial_delay": 5, "max_delay": 1}, "webhook.max_delay")])
def test_webhook_is_strict(bad, key):
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"webhook": bad})
    assert info.value.details["key"] == key


def test_reload_plan():
    old = settings_from_dict({"tenants": {"boot": ["a", "b"]}})
    new = settings_from_dict({"tenants": {"boot": ["b", "c"]}, "worker": {"stop_grace": 9}, "api": {"port": 1}})
    plan = plan_reload(old, new, running={"a", "b", "x"})
    assert plan.stop == ["a"] and plan.restart == ["b", "x"] and plan.start == ["c"]
    assert plan.not_applied == ["api"]
    same = plan_reload(old, settings_from_dict({"tenants": {"boot": ["a", "b"]}}), running={"a", "b"})
    assert (same.start, same.stop, same.restart, same.changed) == ([], [], [], [])
    # daemon-side worker fields (spawn slots, prewarm) restart nobody; any other worker field restarts all
    for worker in ({"max_concurrent_spawns": 2}, {"prewarm": False}, {"max_concurrent_spawns": 3, "prewarm": False}):
        live = plan_reload(old, settings_from_dict({"tenants": {"boot": ["a", "b"]}, "worker": worker}), running={"a"})
        assert live.changed == ["worker"] and live.restart == [], worker
    both = settings_from_dict({"tenants": {"boot": ["a", "b"]}, "worker": {"max_concurrent_spawns": 2, "stop_grace": 9}})
    assert plan_reload(old, both, running={"a"}).restart == ["a"]
