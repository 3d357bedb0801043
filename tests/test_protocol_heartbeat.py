"""The heartbeat fast path of supervisor/protocol.py (a regex instead of json.loads, for idle CPU) must give exactly
what the general JSON path gives: the same Event with the same value types, or the same ProtocolError kind."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor import protocol
from supervisor.protocol import ProtocolError, parse_line

FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NODE = b'{"type":"heartbeat","rss":83415040,"uptimeMs":5003,"ts":1764070000000}'  # JSON.stringify, worker.mjs
FAKE = json.dumps({"type": "heartbeat", "rss": 1, "uptimeMs": 5003}).encode()  # tests/fake_worker.py


def outcome(parse, line: bytes):
    """Comparable result: (type, [(field, value type, value)]) or the error kind. Types matter: 1 == 1.0."""
    try:
        event = parse(line)
    except ProtocolError as exc:
        return ("error", exc.kind)
    return (event.type, [(k, type(v), v) for k, v in event.fields.items()])


def assert_same(line: bytes) -> None:
    assert outcome(parse_line, line) == outcome(protocol._parse_json, line), line


def test_what_the_workers_write_takes_the_fast_path():
    for line in (NODE, FAKE, NODE + b"\n", FAKE + b"\r\n"):
        assert protocol._HEARTBEAT_RE.fullmatch(line), line
        assert_same(line)
    assert parse_line(NODE).fields == {"rss": 83415040, "uptimeMs": 5003, "ts": 1764070000000}


def test_near_misses_fall_back_to_the_general_path():
    for line in (
        b'{"type":"heartbeat","rss":01,"uptimeMs":5}',  # leading zero: not JSON
        b'{"type":"heartbeat","rss":1.5,"uptimeMs":5}',  # float: general path (still valid)
        b'{"type":"heartbeat","rss":1e3,"uptimeMs":5}',
        b'{"type":"heartbeat","rss":"1","uptimeMs":5}',  # wrong type: bad_field
        b'{"type":"heartbeat","rss":1,"uptimeMs":5,"ts":"x"}',
        b'{"type":"heartbeat","rss":1,"uptimeMs":5,"rss":2}',  # duplicate key: the last wins in json.loads
        b'{"type":"heart\\u0062eat","rss":1,"uptimeMs":5}',  # escaped type name
        b'{"type":"heartbeat","rss":1,"uptimeMs":5}x',
        b'{"type":"heartbeat","rss":1,"uptimeMs":5',
        b'{"type":"heartbeat","rss":-0,"uptimeMs":99999999999999999999999}',
        b'\x0b{"type":"heartbeat","rss":1,"uptimeMs":5}',  # str.strip() whitespace that JSON does not know
        b'{"type":"heartbeat"}',
    ):
        assert_same(line)


_ws = st.sampled_from(["", "", " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\xa0"])
_num = st.sampled_from(["0", "-0", "7", "-7", "01", "1.0", "1e3", "-", "9" * 17, "9" * 18, "9" * 30, '"5"', "true",
                        "null"]) | st.integers().map(str)
_key = st.sampled_from(["type", "rss", "uptimeMs", "ts", "extra", "Rss", "rss "])
# The fast path's own shape (type, rss, uptimeMs, optional ts) with odd numbers, or any member list at all.
_canonical = st.tuples(_num, _num, st.none() | _num).map(
    lambda t: [("type", '"heartbeat"'), ("rss", t[0]), ("uptimeMs", t[1])] + ([("ts", t[2])] if t[2] else []))
_members = _canonical | st.lists(st.tuples(_key, _num | st.just('"heartbeat"')), max_size=5)


@FUZZ
@given(_members, st.lists(_ws, min_size=12, max_size=12))
def test_heartbeat_like_lines_parse_as_the_general_path_does(members, ws):
    w = iter(ws * 4)
    body = ",".join(f'{next(w)}"{k}"{next(w)}:{next(w)}{v}{next(w)}' for k, v in members)
    assert_same(f"{next(w)}{{{body}}}{next(w)}".encode())


@FUZZ
@given(st.lists(st.integers(-10**18, 10**18), min_size=2, max_size=3),
       st.lists(st.sampled_from(["", " ", "\t", "\r\n"]), min_size=16, max_size=16))
def test_valid_fast_path_lines_keep_every_value(values, ws):
    w = iter(ws)
    members = zip(("rss", "uptimeMs", "ts"), values)
    body = "".join(f',{next(w)}"{k}"{next(w)}:{next(w)}{v}{next(w)}' for k, v in members)
    line = f'{next(w)}{{"type":{next(w)}"heartbeat"{body}}}'.encode()
    assert_same(line)
    assert protocol._HEARTBEAT_RE.fullmatch(line) or any(abs(v) >= 10**18 for v in values)


@FUZZ
@given(st.sampled_from([NODE, FAKE]), st.integers(0, 200), st.integers(0, 255), st.sampled_from(["ins", "del", "set"]))
def test_one_byte_mutations_of_real_heartbeats(line, pos, byte, op):
    pos %= len(line) + 1
    if op == "ins":
        line = line[:pos] + bytes([byte]) + line[pos:]
    elif op == "del":
        line = line[:pos] + line[pos + 1:]
    else:
        line = line[:pos] + bytes([byte]) + line[pos + 1:]
    assert_same(line)
