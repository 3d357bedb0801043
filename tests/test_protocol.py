"""Protocol parsing: every documented event validates, garbage never raises anything but ProtocolError, and the
line reader survives over-long lines and invalid UTF-8."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import protocol
from supervisor.protocol import TOO_LONG, ProtocolError, encode_command, parse_line, read_lines

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


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_only_protocol_error(data):
    try:
        parse_line(data)
    except ProtocolError:
        pass


@given(st.dictionaries(st.text(max_size=8), st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                       max_size=5), st.sampled_from(sorted(protocol.EVENT_TYPES)))
@settings(max_examples=300, deadline=None)
def test_arbitrary_objects_only_protocol_error(obj, etype):
    obj["type"] = etype
    try:
        parse_line(json.dumps(obj).encode())
    except ProtocolError:
        pass


def test_encode_command():
    assert json.loads(encode_command("pairing_code", id="7", phone="4912")) == {"cmd": "pairing_code", "id": "7",
                                                                                 "phone": "4912"}
    assert encode_command("stop").endswith(b"\n")
    with pytest.raises(ValueError):
        encode_command("rm -rf")


async def _collect(chunks: list[bytes], limit: int) -> list:
    reader = asyncio.StreamReader()
    for c in chunks:
        reader.feed_data(c)
    reader.feed_eof()
    return [line async for line in read_lines(reader, limit=limit)]


async def test_read_lines_survives_overlong_and_split_lines():
    long = b"x" * 5000
    out = await _collect([b'{"a":1}\n', long[:3000], long[3000:] + b"\nnext\n", b"par", b"tial\nlast"], limit=1000)
    assert out == [b'{"a":1}', TOO_LONG, b"next", b"partial", b"last"]


async def test_read_lines_overlong_at_one_mib_default():
    big = b"y" * (protocol.MAX_LINE_BYTES + 10)
    out = await _collect([big + b"\n", b"\xff\xfe\n", b'{"type":"connecting"}\n'], limit=protocol.MAX_LINE_BYTES)
    assert out[0] is TOO_LONG and out[1] == b"\xff\xfe"
    assert parse_line(out[2]).type == "connecting"


async def test_read_lines_exact_limit_is_kept():
    out = await _collect([b"z" * 100 + b"\n"], limit=100)
    assert out == [b"z" * 100]
