"""Cluster mode: a request for a tenant that another node owns is proxied to that node (docs/cluster.md, "The daemon
in cluster mode", "Forwarding"). Installed by the runner as the API's innermost middleware, so a request is routed,
authenticated (the secret or a stream token) and size-checked here first: the forwarded-by header below is never a
way around the secret.

- What is forwarded (`ROUTES`): the commands that need the live worker (restart, logout, pairing-code), QR, the send
  API (a message must land in the owner's outbox), one tenant's event stream (streamed through), and start/stop.
  Status and the tenant list stay local (the shared snapshot answers them); DELETE acts on this host's files.
- Where to: only the owner's `advertise_url` as the store holds it (`ClusterNode.forward_target`), never anything
  from the request (Host, X-Forwarded-*). No redirects are followed and no proxy from the environment is used: the
  client's secret goes to a configured node or nowhere.
- Loop guard: a forwarded request carries `X-Bsup-Forwarded-By: <node>`; a request that has it is answered here as
  before forwarding existed (409 `not_owner` when the snapshot was stale), never forwarded again.
- No owner yet, the owner is this node, or the owner has no usable `advertise_url`: today's local answer.
- The owner does not answer: 504 `owner_unreachable` after the bound (502 when the connection fails), with `owner`
  and `advertiseUrl`; but if the store says the owner is dead (its node lock is free), our claim loop is nudged and
  the request is answered here once this node took the tenant over; if another live node took it (the store, not
  the snapshot, is read again), the request is forwarded there once (one extra hop at most: it carries our
  forwarded-by header, and never goes back to the dead node); else 503 `owner_down` (with Retry-After).
  start/stop fall back to the local answer instead: their intent is recorded in the store, which the owner acts on
  when it is back, so they never need the owner to answer.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web
from yarl import URL

from .api_server import error_response, read_body
from .cluster.owner_poll import OwnerPoll, Row
from .events import get_logger
from .ids import is_tenant_id
from .settings import Settings
from .sse import HEARTBEAT

log = get_logger()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FORWARDED_BY = "X-Bsup-Forwarded-By"
FORWARDED_TO = "X-Bsup-Forwarded-To"  # on the answer: which node served it (operators, tests)
_T = "/whatsapp/{tenant}"
# (method, route template) -> kind. "intent": falls back to the local (store) answer when the owner does not answer.
ROUTES = {
    ("POST", f"{_T}/start"): "intent", ("POST", f"{_T}/stop"): "intent",
    ("POST", f"{_T}/restart"): "slow", ("POST", f"{_T}/logout"): "slow", ("POST", f"{_T}/pairing-code"): "slow",
    ("GET", f"{_T}/qr"): "quick", ("POST", f"{_T}/messages"): "quick", ("GET", f"{_T}/messages/{{messageId}}"): "quick",
    ("GET", f"{_T}/events"): "stream",
}
# Request headers passed on: auth (the owner checks it again), the send API's key, SSE resume, the body's type.
# Not Host/Origin (the owner's no-secret guard compares them with its own address), not hop-by-hop headers.
REQUEST_HEADERS = ("X-Internal-Secret", "Authorization", "Idempotency-Key", "Content-Type", "Last-Event-ID", "Accept")
RESPONSE_HEADERS = ("Content-Type", "Content-Encoding", "Cache-Control", "Idempotent-Replayed", "Retry-After", "Allow",
                    "X-Accel-Buffering")
QUICK = 10.0  # seconds for an answer that needs no worker round trip (also: a stream's response headers)
CONNECT = 5.0  # seconds for the TCP connection (a SIGSTOPped owner's kernel still accepts: QUICK ends that)
TAKEOVER_WAIT = 3.0  # seconds a request for a dead owner's tenant waits for a new owner (our nudged rounds or another)
MAX_ANSWER = 4 * 1024 * 1024  # an owner's answer larger than this is not one of ours (a QR PNG is a few KB)
NOBODY: Row = ("", 0, None, False)  # what the owner poll answers when the tenant has no owner row (nobody's now)
FORWARDER: web.AppKey[Any] = web.AppKey("forwarder")


class OwnerUnreachable(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error


def usable_url(url: str | None) -> URL | None:
    """The advertised URL if it can be forwarded to: http(s), a host, nothing a request could smuggle in (userinfo,
    query, fragment). Anything else keeps today's answer (409 not_owner) rather than sending the secret to it."""
    if not url:
        return None
    try:
        u = URL(url)
    except (ValueError, TypeError):
        return None
    if u.scheme not in ("http", "https") or not u.host or u.user or u.password or u.query_string or u.fragment:
        return None
    return u


def target(base: URL, raw_path: str) -> URL:
    """The owner's URL for this request: its advertised base (a path prefix kept) + our path and query as received
    (already percent-encoded: encoded=True keeps them byte for byte)."""
    return URL(str(base).rstrip("/") + raw_path, encoded=True)


class Forwarder:
    """The node's one ClientSession (made in `start`, closed in `close`) and the proxied event streams."""

    def __init__(self, node: Any, settings: Settings) -> None:
        assert settings.cluster is not None
        self.node, self.settings, self.node_id = node, settings, settings.cluster.node_id
        w = settings.worker
        # A slow command may legitimately take the owner this long: pairing-code waits up to 30 s for its worker,
        # a restart stops (grace) and then waits for the new worker's hello (heartbeat_timeout).
        self.slow = max(30.0, w.stop_grace + w.heartbeat_timeout) + 5.0
        self.stream_idle = 2 * HEARTBEAT + 5.0  # two missed SSE keep-alives and the owner's stream is dead
        # An owner cut off by the network never answers the SYN: a slow command must not wait its whole bound for it.
        self._connect_only = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT)
        self.session: aiohttp.ClientSession | None = None
        self._streams: set[aiohttp.ClientResponse] = set()
        self.poll = OwnerPoll(node.own)  # requests waiting for a dead owner's tenant to be taken over

    async def start(self) -> None:
        # limit: one outgoing connection per incoming one at most, and those are capped by api.max_connections.
        # force_close: no pooled keep-alive connections. The owner closes idle ones on its own terms (api.idle_timeout,
        # and evicts them first at its connection cap), and a request sent on one it just closed would be a 502.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.settings.api.max_connections, force_close=True),
            cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, auto_decompress=False)

    def end_streams(self) -> None:
        """Shutdown: proxied event streams end now, like local ones (EventBus.close), so the API closes promptly."""
        for resp in list(self._streams):
            resp.close()

    async def close(self) -> None:
        self.end_streams()
        await self.poll.close()
        if self.session is not None:
            await self.session.close()

    # -- the middleware ------------------------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        kind = ROUTES.get((request.method, resource.canonical if resource is not None else ""))
        tid = request.match_info.get("tenant")
        if kind is None or FORWARDED_BY in request.headers or not is_tenant_id(tid) or self.session is None:
            return await handler(request)
        found = self.node.forward_target(str(tid))
        base = usable_url(found[1]) if found else None
        if found is None or base is None:
            return await handler(request)
        owner = found[0]
        try:
            return await self._send(request, kind, owner, base)
        except OwnerUnreachable as exc:
            log.warning("api.forward_failed", tenant=tid, owner=owner, error=exc.error, status=exc.status)
            if kind == "intent":
                return await handler(request)  # the store records the intent; the owner acts on it later
            down = await self._owner_down(str(tid), owner)
            if down == "ours":
                return await handler(request)  # taken over by this node just now: the local answer
            if isinstance(down, tuple):  # taken over by another live node: one more hop, there (never back)
                return await self._second_hop(request, kind, str(tid), *down)
            if down == "down":
                resp = error_response(503, "owner_down", f"tenant {tid} has no live owner now (node {owner} did not "
                                      "answer; another node is taking it over): retry", tenant=tid, owner=owner,
                                      advertiseUrl=found[1])
            else:
                resp = error_response(exc.status, "owner_unreachable",
                                      f"tenant {tid} runs on node {owner}, which did not answer ({exc.error}): retry",
                                      tenant=tid, owner=owner, advertiseUrl=found[1])
            resp.headers["Retry-After"] = "1"
            return resp

    async def _send(self, request: web.Request, kind: str, owner: str, base: URL) -> web.StreamResponse:
        if kind == "stream":
            return await self._stream(request, owner, base)
        return await self._forward(request, owner, base, self.slow if kind == "slow" else QUICK)

    async def _second_hop(self, request: web.Request, kind: str, tid: str, owner: str, url: str) -> web.StreamResponse:
        """The dead owner's tenant runs on `owner` now (a live node, not the dead one, not us): forward there once.
        Our FORWARDED_BY header keeps it there (loop guard), so a request makes at most this one extra hop."""
        try:
            return await self._send(request, kind, owner, usable_url(url))  # type: ignore[arg-type] - checked
        except OwnerUnreachable as exc:
            log.warning("api.forward_failed", tenant=tid, owner=owner, error=exc.error, status=exc.status)
            resp = error_response(exc.status, "owner_unreachable",
                                  f"tenant {tid} runs on node {owner}, which did not answer ({exc.error}): retry",
                                  tenant=tid, owner=owner, advertiseUrl=url)
            resp.headers["Retry-After"] = "1"
            return resp

    async def _owner_down(self, tid: str, owner: str) -> str | tuple[str, str] | None:
        """After a failed forward: is the owner dead (its node lock free)? Then nudge our claim loop (a dead node's
        tenants may be taken over now: ownership.py does it in its next round, which the nudge runs at once) and
        wait up to TAKEOVER_WAIT: "ours" when this node took the tenant over; (node, url) when the store shows
        another live node owning it (placement gave it to that node, which claimed it in its own round; its URL
        usable); "down" when nobody live owns it by then. None: the owner is alive (e.g. SIGSTOPped or cut off: the
        lease decides) or the store cannot tell. Both questions are answered by the store, not the snapshot, through
        one query per POLL for all waiting requests (cluster/owner_poll.py): a burst of failed forwards for a dead
        node's tenants does not queue a query each on the data connection the takeover's claim needs."""
        own = self.node.own
        row = await self.poll.wait(tid, lambda r: r or NOBODY, QUICK, fresh=True)  # a read after our failure
        if row is None:
            # no successful read within QUICK (api.owner_poll_failed says why): the answer without the store
            log.warning("api.owner_check_failed", tenant=tid, owner=owner, error="no_store_answer")
            return None
        if row is not NOBODY and row[0] == owner and row[3]:
            return None  # still its owner, and alive
        own.nudge()

        def settled(row: Row | None) -> str | tuple[str, str] | None:
            if tid in own.owned:
                return "ours"
            if row is None:
                return None
            node, _epoch, url, alive = row  # another node than the dead one holds it: a new epoch
            return (node, str(url)) if alive and node not in (owner, self.node_id) and usable_url(url) else None

        found = await self.poll.wait(tid, settled, TAKEOVER_WAIT)
        log.warning("api.owner_down", tenant=tid, owner=owner, taken_over_here=found == "ours",
                    taken_over_by=found[0] if isinstance(found, tuple) else None)
        return found or "down"

    def _headers(self, request: web.Request) -> dict[str, str]:
        headers = {h: request.headers[h] for h in REQUEST_HEADERS if h in request.headers}
        headers[FORWARDED_BY] = self.node_id
        return headers

    async def _forward(self, request: web.Request, owner: str, base: URL, bound: float) -> web.StreamResponse:
        assert self.session is not None
        body = await read_body(request, self.settings.api.body_timeout) if request.body_exists else None
        try:
            async with asyncio.timeout(bound):
                async with self.session.request(request.method, target(base, request.raw_path), data=body,
                                                headers=self._headers(request), allow_redirects=False,
                                                timeout=self._connect_only) as up:
                    if (up.content_length or 0) > MAX_ANSWER:
                        raise OwnerUnreachable(502, "answer_too_large")
                    data = await up.content.read(MAX_ANSWER + 1)
                    if len(data) > MAX_ANSWER:
                        raise OwnerUnreachable(502, "answer_too_large")
        except TimeoutError:
            raise OwnerUnreachable(504, "timeout") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise OwnerUnreachable(502, type(exc).__name__) from None
        resp = web.Response(status=up.status, body=data)
        self._copy_headers(up, resp, owner)
        return resp

    async def _stream(self, request: web.Request, owner: str, base: URL) -> web.StreamResponse:
        """The owner's event stream, chunk by chunk. Its headers must come within QUICK; after that a stream silent
        for two keep-alives ends (the client reconnects with Last-Event-ID, as after any daemon restart)."""
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT, sock_read=self.stream_idle)
        try:
            async with asyncio.timeout(QUICK):
                up = await self.session.get(target(base, request.raw_path), headers=self._headers(request),
                                            allow_redirects=False, timeout=timeout)
        except TimeoutError:
            raise OwnerUnreachable(504, "timeout") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise OwnerUnreachable(502, type(exc).__name__) from None
        self._streams.add(up)
        try:
            resp = web.StreamResponse(status=up.status)
            self._copy_headers(up, resp, owner)
            await resp.prepare(request)
            try:
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                pass  # the owner went quiet or away, or our client did: the stream ends, the client reconnects
            return resp
        finally:
            self._streams.discard(up)
            up.close()

    @staticmethod
    def _copy_headers(up: aiohttp.ClientResponse, resp: web.StreamResponse, owner: str) -> None:
        for h in RESPONSE_HEADERS:
            if h in up.headers:
                resp.headers[h] = up.headers[h]
        resp.headers[FORWARDED_TO] = owner


def install(app: web.Application, forwarder: Forwarder) -> None:
    """Innermost middleware (after errors, auth, body limits): call before the app starts serving."""
    app[FORWARDER] = forwarder
    app.middlewares.append(forwarder.middleware)
