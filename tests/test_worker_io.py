"""What crosses the daemon/worker boundary besides the protocol: the environment a real worker gets (an allow-list:
no API secret) and how its stderr reaches the log (first line, scrubbed, rate-limited: never verbatim)."""

from __future__ import annotations

import json

import pytest
from structlog.testing import capture_logs

from conftest import wait_until
from supervisor.daemon import Supervisor
from supervisor.worker_io import StderrForwarder

HELLO = {"hello": {}}

# What libsignal's console.warn("Session already closed", session) becomes after worker.mjs routes console.* into
# pino: util.format's inspection of a SessionEntry, private ratchet key included, as one JSON string.
PRIV = " ".join(f"{b:02x}" for b in range(0x38, 0x58))
SESSION_WARNING = (
    "Session already closed SessionEntry {\n"
    "  _chains: {\n"
    "    'BUbQ3mT2w9r0Z1x8yV7uK6jH5gF4dS3aP2oI1uY0tR9e': { chainKey: [Object], chainType: 1, messageKeys: {} }\n"
    "  },\n"
    "  registrationId: 1234,\n"
    "  currentRatchet: {\n"
    "    ephemeralKeyPair: {\n"
    f"      pubKey: <Buffer 05 {PRIV}>,\n"
    f"      privKey: <Buffer {PRIV}>\n"
    "    },\n"
    "  },\n"
    "  indexInfo: { baseKey: <Buffer 05 1a 2b 3c 4d 5e 6f 70 ... 25 more bytes>, remoteIdentityKey: ... }\n"
    "}"
)
# A one-line console message with the key material on its first line (no newline to cut at).
ONE_LINE = f"Closing session: {{ privKey: <Buffer {PRIV}>, remote: 972501234567:12@s.whatsapp.net }}"


async def test_a_libsignal_warning_with_a_private_key_is_never_forwarded_verbatim(make_settings):
    lines = [json.dumps({"level": 40, "pid": 1, "src": "console", "msg": SESSION_WARNING}),
             json.dumps({"level": 40, "src": "console", "msg": ONE_LINE}),
             "Error: message from 972501234567@s.whatsapp.net failed"]  # raw (not pino) stderr
    sup = Supervisor(make_settings([HELLO] + [{"stderr": x} for x in lines] + [{"wait": True}]))
    try:
        with capture_logs() as logs:
            await sup.start_tenant("t")
            await wait_until(lambda: sum(e["event"] == "worker.log" for e in logs) >= 3)
        wl = [e for e in logs if e["event"] == "worker.log"]
        dump = json.dumps(wl)
        assert "38 39 3a" not in dump and "BUbQ3mT2" not in dump and "972501234567" not in dump, dump
        assert wl[0]["msg"] == "Session already closed SessionEntry {" and wl[0]["lines_dropped"] == 12
        assert wl[0]["src"] == "console" and wl[0]["worker_level"] == "warning"
        assert wl[1]["msg"] == "Closing session: { privKey: <Buffer [redacted]>, remote: [redacted]@s.whatsapp.net }"
        assert wl[2]["src"] == "raw" and wl[2]["msg"] == "Error: message from [redacted]@s.whatsapp.net failed"
    finally:
        await sup.shutdown()


def test_stderr_is_rate_limited_per_worker_and_says_how_much_it_dropped():
    now = [0.0]
    fwd = StderrForwarder("t", clock=lambda: now[0])
    with capture_logs() as logs:
        for i in range(100):  # a burst: 20 pass, 80 are counted
            fwd.forward(f"line {i}")
        now[0] += 5.0  # five seconds later: five more
        for i in range(10):
            fwd.forward(f"later {i}")
    assert [e["msg"] for e in logs][:20] == [f"line {i}" for i in range(20)]
    assert [e["msg"] for e in logs][20:] == [f"later {i}" for i in range(5)]
    assert logs[20]["suppressed"] == 80 and "suppressed" not in logs[21]
    assert fwd.suppressed == 85


async def test_a_real_worker_gets_an_explicit_environment_without_the_api_secret(make_settings, monkeypatch):
    monkeypatch.setenv("INTERNAL_SECRET", "s3cr3t-api")
    monkeypatch.setenv("BSUP_API_KEY_OF_THE_APP", "other-secret")  # e.g. a differently named api.secret_env
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud")
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", "/etc/ssl/extra.pem")
    monkeypatch.setenv("LC_TIME", "C.UTF-8")
    sup = Supervisor(make_settings([HELLO, {"qr": "q"}, {"wait": True}], env={"HTTPS_PROXY": "http://proxy:3128"}))
    try:
        st = await sup.start_tenant("t")
        raw = open(f"/proc/{st['pid']}/environ", "rb").read()  # what the child really got, not what we computed
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if item)
        env = {k.decode(): v.decode() for k, v in env.items()}
    finally:
        await sup.shutdown()
    assert b"s3cr3t-api" not in raw and b"other-secret" not in raw and b"cloud" not in raw
    assert {"INTERNAL_SECRET", "BSUP_API_KEY_OF_THE_APP", "AWS_SECRET_ACCESS_KEY"}.isdisjoint(env)
    assert env["BSUP_TENANT"] == "t" and env["BSUP_LOCK_FD"].isdigit() and env["PATH"]
    assert env["NODE_EXTRA_CA_CERTS"] == "/etc/ssl/extra.pem" and env["LC_TIME"] == "C.UTF-8"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"  # worker.env passes anything the operator lists


@pytest.mark.parametrize("name", ["NOTIFY_SOCKET", "WATCHDOG_USEC", "PYTHONPATH", "SSH_AUTH_SOCK",
                                  "DBUS_SESSION_BUS_ADDRESS", "NODE_AUTH_TOKEN", "NODE_SECRET", "LC_PASSWORD"])
def test_service_manager_and_session_variables_are_not_inherited(name):
    from supervisor.worker_io import inherited_env

    assert inherited_env({name: "x", "PATH": "/bin"}) == {"PATH": "/bin"}
