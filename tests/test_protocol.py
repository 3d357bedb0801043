"""Protocol parsing, case by case: every documented event validates, each kind of bad line is its ProtocolError, and
commands encode. Arbitrary input and the line reader (over-long lines, any chunking) are tests/test_fuzz_protocol.py."""

from __future__ import annotations

import json

import pytest

from supervisor.protocol import ProtocolError, encode_command, parse_line

VALID = [
    {"type": "hello", "protocol": 1, "pid": 12, "worker": "w/1", "baileys": "7", "waVersion": [2, 3000, 1]},
    {"type": "connecting"},
    {"type": "qr", "qr": "2@abc"},
    {"type": "pairing_code", "code": "ABCD1234"},
    {"type": "open", "me": {"id": "1@s.whatsapp.net"}, "pushName": None},
    {"type": "close", "code": 515, "reason": "restartRequired", "message": "x", "isNewLogin": True},
    {"type": "close", "code": None, "reason": None, "message": "gone"},
    {"type": "creds", "registered": True, "me": "1@s.whatsapp.net"},
    {"type": "message", "upsertType": "notify", "messages": [{"key": {}}], "ref": "ab12", "recovered": False},
    {"type": "message_update", "key": {"id": "x"}, "update": {"status": 3}},
    {"type": "heartbeat", "rss": 100, "uptimeMs": 5, "ts": 1700000000000},
    {"type": "reply", "id": "1", "ok": True, "result": {}},
    {"type": "error", "code": "auth_write_failed", "message": "m", "fatal": True},
]


@pytest.mark.parametrize("obj", VALID, ids=lambda o: o["type"])
def test_valid_events_parse(obj):
    event = parse_line(json.dumps(obj).encode() + b"\n")
    assert event.type == obj["type"]
    assert all(event.get(k) == v for k, v in obj.items() if k != "type")


@pytest.mark.parametrize("line,kind", [
    (b"", "empty"),
    (b"not json", "bad_json"),
    (b"[1,2]", "not_object"),
    (b'{"x":1}', "no_type"),
    (b'{"type":"bogus"}', "unknown_type"),
    (b'{"type":"qr"}', "missing_field"),
    (b'{"type":"qr","qr":5}', "bad_field"),
    (b'{"type":"hello","protocol":true}', "bad_field"),  # bool is not an int here
    (b'{"type":"creds","registered":1}', "bad_field"),
    (b'{"type":"close","code":"515"}', "bad_field"),
    (b'{"type":"heartbeat","ts":"now"}', "bad_field"),
    (b"\xff\xfe{}", "bad_utf8"),
    (b"[" * 100000, "bad_json"),  # deep nesting: RecursionError must not escape
])
def test_invalid_lines_raise_protocol_error(line, kind):
    with pytest.raises(ProtocolError) as info:
        parse_line(line)
    assert info.value.kind == kind


def test_encode_command():
    assert json.loads(encode_command("pairing_code", id="7", phone="4912")) == {"cmd": "pairing_code", "id": "7",
                                                                                 "phone": "4912"}
    assert encode_command("stop").endswith(b"\n")
    with pytest.raises(ValueError):
        encode_command("rm -rf")
