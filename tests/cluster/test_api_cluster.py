"""GET /cluster in the single-host mode: a clear JSON 404 (`not_clustered`), behind the secret like every route."""

from __future__ import annotations

from aiohttp import ClientSession

from supervisor.api import make_app, start_api
from supervisor.daemon import Supervisor


async def test_cluster_route_without_cluster_section(make_settings):
    sup = Supervisor(make_settings(api={"secret": "k"}))
    runner, port = await start_api(make_app(sup, sup.settings.api), "127.0.0.1", 0)
    try:
        async with ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/cluster") as r:
                assert r.status == 401
            async with http.get(f"http://127.0.0.1:{port}/cluster", headers={"X-Internal-Secret": "k"}) as r:
                assert r.status == 404 and (await r.json())["error"] == "not_clustered"
    finally:
        await runner.cleanup()
        await sup.shutdown()
