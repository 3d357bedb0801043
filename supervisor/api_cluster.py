"""`GET /cluster` (cluster mode, docs/cluster.md): the nodes, whether each is alive or draining, its advertised URL
and cap, and its tenants with their epochs, read from the shared store by whichever node is asked. Behind the API
secret like every route. Without a `cluster:` section: 404 `not_clustered`."""

from __future__ import annotations

from aiohttp import web

from .api_server import error_response, json_response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/cluster", cluster)


async def cluster(request: web.Request) -> web.Response:
    from .api import SUPERVISOR

    node = getattr(request.app[SUPERVISOR], "cluster", None)  # test stubs have none
    if node is None:
        return error_response(404, "not_clustered", "this daemon runs in single-host mode (no cluster: section)")
    return json_response(await node.view())
