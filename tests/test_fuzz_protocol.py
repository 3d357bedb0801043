"""Property-based tests of the worker line protocol (supervisor/protocol.py): whatever a worker writes, the parser
either returns a validated Event or raises ProtocolError (with a stable `kind`), and the line reader survives any
byte stream, chunked any way, without ever holding more than one line's limit."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from supervisor import protocol
from supervisor.protocol import MAX_LINE_BYTES, TOO_LONG, Event, ProtocolError, parse_line, read_lines

KINDS = {"too_long", "bad_utf8", "empty", "bad_json", "not_object", "no_type", "unknown_type", "bad_field",
         "missing_field"}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                                max_size=4),
                           max_leaves=20)
# Field names the schema knows (so fuzzed objects hit the type checks, not only "unknown field").
known_fields = sorted({f for schema in protocol._SCHEMA.values() for f in schema} | {"ts"})
event_like = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(protocol.EVENT_TYPES)) | st.text(max_size=10) | json_scalars},
    optional={f: json_values for f in known_fields},
)


def check(line: bytes) -> Event | None:
    """The contract: an Event, or a ProtocolError of a known kind with a bounded message. Anything else escapes."""
    try:
        event = parse_line(line)
    except ProtocolError as exc:
        assert exc.kind in KINDS, exc.kind
        assert len(str(exc)) < 200  # worker-controlled text is capped before it reaches a log line
        return None
    assert isinstance(event, Event) and event.type in protocol.EVENT_TYPES
    return event


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_escape(data: bytes) -> None:
    check(data)


@FUZZ
@given(event_like)
def test_event_like_objects_validate_or_protocol_error(obj: dict) -> None:
    try:
        line = json.dumps(obj).encode()
    except ValueError:
        assume(False)
    event = check(line)
    if event is not None:
        # Whatever passed validation satisfies the schema the tenant code relies on.
        for name, (allowed, required) in protocol._SCHEMA[event.type].items():
            if required:
                assert name in event.fields
            if name in event.fields:
                value = event.fields[name]
                assert isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool))


@settings(FUZZ, max_examples=100)  # event_like is the slow strategy; its own test above runs it 300 times
@given(event_like, st.dictionaries(st.text(max_size=8), json_scalars, max_size=5))
def test_unknown_fields_beside_known_ones_validate_or_protocol_error(obj: dict, extra: dict) -> None:
    # Fields the schema does not know (a newer worker's) next to the known ones (from tests/test_protocol.py).
    try:
        line = json.dumps({**extra, **obj}).encode()
    except ValueError:
        assume(False)
    check(line)


@FUZZ
@given(json_values)
def test_any_json_value_is_handled(value) -> None:
    check(json.dumps(value).encode())


@FUZZ
@given(st.text(max_size=200))
def test_any_text_with_surrogates_escaped(text: str) -> None:
    # Lone surrogates escaped by a JS worker (\ud800) are valid JSON text: they must parse or be rejected cleanly.
    check(json.dumps({"type": "qr", "qr": text}).encode())
    check(text.encode("utf-8", "surrogatepass"))


def test_deep_nesting_is_a_protocol_error_not_a_recursion_crash() -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    assert len(deep) < MAX_LINE_BYTES
    check(deep)
    deep_obj = b'{"type":"message","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    check(deep_obj)


def test_huge_numbers_are_handled() -> None:
    # int('9'*5000) raises ValueError since Python 3.11's int-digit limit: must become bad_json, not escape.
    check(b'{"type":"heartbeat","rss":' + b"9" * 5000 + b"}")
    check(b'{"type":"heartbeat","rss":1e999}')  # inf
    check(b'{"type":"heartbeat","rss":NaN}')


@pytest.mark.parametrize("size", [MAX_LINE_BYTES - 1, MAX_LINE_BYTES, MAX_LINE_BYTES + 1, MAX_LINE_BYTES + 2])
def test_lines_around_the_limit(size: int) -> None:
    # A valid event padded to exactly `size` bytes (without newline).
    head = b'{"type":"heartbeat","pad":"'
    line = head + b"x" * (size - len(head) - 2) + b'"}'
    assert len(line) == size
    if size <= MAX_LINE_BYTES + 1:  # parse_line allows the limit plus its newline
        assert parse_line(line).type == "heartbeat"
    else:
        with pytest.raises(ProtocolError) as info:
            parse_line(line)
        assert info.value.kind == "too_long"


# -- read_lines: the framing layer -------------------------------------------------------------------------------


async def collect(chunks: list[bytes], limit: int) -> list:
    reader = asyncio.StreamReader()
    for c in chunks:
        reader.feed_data(c)
    reader.feed_eof()
    return [x async for x in read_lines(reader, limit=limit)]


def reference_split(data: bytes, limit: int) -> list:
    """What read_lines must produce: every \\n-terminated line (and a final unterminated one), lines over the
    limit replaced by one TOO_LONG each."""
    parts = data.split(b"\n")
    last = parts.pop()
    out: list = [TOO_LONG if len(p) > limit else p for p in parts]
    if last:
        out.append(TOO_LONG if len(last) > limit else last)
    return out


@FUZZ
@given(data=st.binary(max_size=600) | st.lists(st.sampled_from([b"a" * 7, b"\n", b"\xff", b"b" * 20]),
                                                max_size=40).map(b"".join),
       cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=8),
       limit=st.integers(min_value=1, max_value=32))
# The hand-written cases of tests/test_protocol.py: an over-long line split across chunks between normal and
# partial lines, and a line of exactly the limit (kept).
@example(data=b'{"a":1}\n' + b"x" * 5000 + b"\nnext\npartial\nlast", cuts=[8, 3008, 5014, 5017], limit=1000)
@example(data=b"z" * 100 + b"\n", cuts=[], limit=100)
async def test_read_lines_matches_reference_for_any_chunking(data: bytes, cuts: list[int], limit: int) -> None:
    points = sorted({c for c in cuts if c <= len(data)} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(points, points[1:]) if b > a]
    got = await collect(chunks, limit)
    want = reference_split(data, limit)
    # A final unterminated over-long line is reported as TOO_LONG while it streams in and not again at EOF.
    assert got == want


async def test_read_lines_100mb_line_then_valid_lines_bounded() -> None:
    """A 100 MB line without newline, then valid lines: one TOO_LONG, the valid lines after it, and the reader never
    buffers more than limit + one chunk (measured on its own buffer via the yielded sizes and tracemalloc)."""
    import tracemalloc

    reader = asyncio.StreamReader(limit=1 << 16)
    ok = json.dumps({"type": "heartbeat"}).encode()
    block = b"x" * (1 << 16)

    class PipeTransport(asyncio.ReadTransport):
        """Flow control as a real pipe transport has it: the reader pauses us past 2 x limit buffered bytes.
        (read_lines yields to the loop after every full chunk, so a feeder that ignored back-pressure would
        outpace it and grow the StreamReader's own buffer, which a real pipe never does.)"""

        paused = False

        def pause_reading(self) -> None:
            self.paused = True

        def resume_reading(self) -> None:
            self.paused = False

    transport = PipeTransport()
    reader.set_transport(transport)

    async def feed() -> None:
        for _ in range(100 * 16):
            while transport.paused:
                await asyncio.sleep(0)
            reader.feed_data(block)
            await asyncio.sleep(0)
        reader.feed_data(b"\n" + ok + b"\n" + ok + b"\n")
        reader.feed_eof()

    tracemalloc.start()
    try:
        feeder = asyncio.create_task(feed())
        got = [x async for x in read_lines(reader)]
        await feeder
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == [TOO_LONG, ok, ok]
    assert peak < 8 * MAX_LINE_BYTES, f"peak traced memory {peak} bytes while discarding a 100 MB line"
