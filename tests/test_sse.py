"""The upstream stream decoders: network reads split the bytes anywhere, and the events must not
depend on where. Checked against a reference that sees the whole stream at once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from llmrpc_server.providers.base import StreamEvent
from llmrpc_server.sse import NDJSONDecoder, SSEDecoder

STREAM = (
    ': keep-alive comment\r\n\r\n'
    'data: {"a": "caf\u00e9 \u2603"}\n\n'
    'event: message_start\ndata: {"type":"message_start"}\n\n'
    'data:{"no_space": true}\r\n\r\n'
    'data: line one\ndata: line two\n\n'
    '{"error": {"message": "raw JSON outside SSE"}}\n\n'
    'id: 7\nretry: 10\ndata: [DONE]\n\n'
    'data: trailing event without blank line'
).encode()

EXPECTED = [
    StreamEvent(data='{"a": "caf\u00e9 \u2603"}'),
    StreamEvent(data='{"type":"message_start"}', event="message_start"),
    StreamEvent(data='{"no_space": true}'),
    StreamEvent(data="line one\nline two"),
    StreamEvent(data='{"error": {"message": "raw JSON outside SSE"}}', event="raw"),
    StreamEvent(data="[DONE]"),
    StreamEvent(data="trailing event without blank line"),
]


def feed_in_pieces(decoder: SSEDecoder | NDJSONDecoder, data: bytes, cuts: list[int]) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        events += decoder.feed(data[start:cut])
        start = cut
    return events + decoder.close()


def test_sse_whole_stream() -> None:
    assert feed_in_pieces(SSEDecoder(), STREAM, []) == EXPECTED


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_sse_events_do_not_depend_on_where_reads_split(cuts: list[int]) -> None:
    assert feed_in_pieces(SSEDecoder(), STREAM, cuts) == EXPECTED


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_ndjson_lines_do_not_depend_on_where_reads_split(cuts: list[int]) -> None:
    data = '{"message": {"content": "h\u00e9"}}\n\n{"done": true}\n{"tail": 1}'.encode()
    assert [e.data for e in feed_in_pieces(NDJSONDecoder(), data, [c for c in cuts if c <= len(data)])] == [
        '{"message": {"content": "h\u00e9"}}', '{"done": true}', '{"tail": 1}']
