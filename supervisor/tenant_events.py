"""What each worker event means for its tenant: the `_ev_<type>` handlers of `Tenant` (a mixin, split out of
tenant.py so the state machine and restart loop stay readable). Handlers run synchronously from the worker's
stdout callback; they may change state (`change_state`) but never await.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from supervisor import protocol
from supervisor.states import TenantState, reason_name
from supervisor.transitions import iso

if TYPE_CHECKING:
    from supervisor.tenant import Tenant

log = structlog.get_logger("supervisor.tenant")
S = TenantState
# Fatal worker errors that no restart can cure, so the tenant rests in `failed` (reason = the code) instead of
# backing off forever: an untrusted server (it failed certificate verification: a wrong endpoint or an
# interceptor) and an unparsable creds.json (the worker refuses to overwrite it with fresh creds).
REST_ON_FATAL = frozenset({"server_verification_failed", "auth_corrupt"})


class WorkerEvents:
    """Mixin for `Tenant`; every attribute it uses is set in `Tenant.__init__`."""

    def _on_event(self: Tenant, event: protocol.Event) -> None:
        handler = getattr(self, f"_ev_{event.type}", None)
        if handler is not None:
            handler(event)

    def _on_invalid_line(self: Tenant, n: int) -> None:
        if self.metrics is not None:
            self.metrics.on_invalid_line(self.id, n)

    def _ev_heartbeat(self: Tenant, event: protocol.Event) -> None:
        if self.metrics is not None and isinstance(event.get("rss"), (int, float)):
            self.metrics.on_rss(self.id, event.get("rss"))

    def _ev_hello(self: Tenant, event: protocol.Event) -> None:
        self._hello.set()
        if self.metrics is not None:
            self.metrics.observe_spawn(time.monotonic() - self._spawn_t0)
        log.info("worker.hello", tenant=self.id, protocol=event.get("protocol"), worker=event.get("worker"),
                 baileys=event.get("baileys"), wa_version=event.get("waVersion"))
        if event.get("protocol") != protocol.PROTOCOL_VERSION:
            self._fatal = "protocol_mismatch"
            log.error("worker.protocol_mismatch", tenant=self.id, expected=protocol.PROTOCOL_VERSION,
                      got=event.get("protocol"))
            if self.worker is not None:
                self.worker.request_stop()
            return
        if not self.auth_info()["registered"]:
            self._prewarm()  # not linked: a QR, a scan and its 515 restart are ahead

    def _ev_connecting(self: Tenant, event: protocol.Event) -> None:
        if self.state in (S.STARTING, S.QR, S.CONNECTED):
            self.change_state(S.CONNECTING)

    def _ev_qr(self: Tenant, event: protocol.Event) -> None:
        if self.state in (S.STARTING, S.CONNECTING, S.QR):
            self.change_state(S.QR, "waiting_for_scan")
            self.qr = event.get("qr")  # never logged
            log.info("tenant.qr", tenant=self.id)
            self._emit("qr", {"qr": self.qr})
            self._prewarm()

    def _ev_pairing_code(self: Tenant, event: protocol.Event) -> None:
        log.info("tenant.pairing_code", tenant=self.id)  # the code itself is a credential: not logged

    def _ev_open(self: Tenant, event: protocol.Event) -> None:
        if self.state in (S.STARTING, S.QR, S.CONNECTING):
            me = event.get("me")
            self.me = me if isinstance(me, dict) else None
            self.push_name = event.get("pushName")
            self.policy.on_open(self.clock())
            self._emit("open", {"serverTime": event.get("serverTime"), "receivedAt": self.clock()})
            self.change_state(S.CONNECTED)
            log.info("tenant.open", tenant=self.id, me=(self.me or {}).get("id"))
            if self.standby is not None:  # linked without the usual 515 restart: the standby is not needed
                self.standby.dismiss()

    def _ev_close(self: Tenant, event: protocol.Event) -> None:
        code = event.get("code")
        self._close = (event, self.state)
        if self.metrics is not None:
            self.metrics.on_close(self.id, code)
        self.last_disconnect = {"code": code, "reason": event.get("reason") or reason_name(code),
                                "message": (event.get("message") or "")[:500], "at": iso(self.clock())}
        log.info("tenant.close", tenant=self.id, code=code, reason_name=self.last_disconnect["reason"],
                 message=self.last_disconnect["message"], state=self.state.value)

    def _ev_creds(self: Tenant, event: protocol.Event) -> None:
        self.registered = bool(event.get("registered"))
        log.info("tenant.creds", tenant=self.id, registered=self.registered)

    def _ev_message(self: Tenant, event: protocol.Event) -> None:
        if self.on_message is None:
            return
        try:
            self.on_message(self.id, event.fields)
        except Exception as exc:  # a webhook bug must not take the tenant down
            log.error("tenant.message_hook_failed", tenant=self.id, error=type(exc).__name__)

    def _ev_error(self: Tenant, event: protocol.Event) -> None:
        log.warning("worker.error", tenant=self.id, code=event.get("code"), message=event.get("message"),
                    fatal=event.get("fatal", False))
        if event.get("fatal") and event.get("code") in REST_ON_FATAL:
            self._fatal = event.get("code")  # retrying cannot help: rest in `failed` with this reason
