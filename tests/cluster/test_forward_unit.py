"""The pure parts of supervisor/api_forward.py: which advertised URLs may be sent a request (and so the secret), and
the owner's URL for a request (its path and query byte for byte). The forwarding itself: test_forward.py."""

from __future__ import annotations

import pytest
from yarl import URL

from supervisor.api_forward import target, usable_url


@pytest.mark.parametrize("url", ["http://10.0.0.5:3300", "https://node-b.example/api", "http://[::1]:3300/"])
def test_usable_urls(url):
    assert usable_url(url) == URL(url)


@pytest.mark.parametrize("url", [None, "", "ftp://10.0.0.5", "http://user:pw@10.0.0.5:3300", "http://user@10.0.0.5",
                                 "http://10.0.0.5/?next=http://evil", "http://10.0.0.5/#x", "10.0.0.5:3300",
                                 "http:///nohost", "javascript:alert(1)"])
def test_unusable_urls_keep_the_local_answer(url):
    assert usable_url(url) is None


def test_target_keeps_the_prefix_and_the_encoded_path_and_query():
    base = URL("http://10.0.0.5:3300/bsup/")
    got = target(base, "/whatsapp/t%2D1/events?token=123.ab%2Bc&lastEventId=7")
    assert str(got) == "http://10.0.0.5:3300/bsup/whatsapp/t%2D1/events?token=123.ab%2Bc&lastEventId=7"
    assert got.host == "10.0.0.5" and got.port == 3300
    # a path cannot move the request to another host: it is appended to the store's URL, never parsed as one
    odd = target(URL("http://10.0.0.5:3300"), "//evil.example/whatsapp/x/qr")
    assert odd.host == "10.0.0.5"
