"""Server callbacks: Lunary's ingestion API (a local HTTP server stands in for it), the ``log`` JSON
lines, custom callables by import path; a raising or sleeping callback never touches the call; no
API key reaches any payload."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from tests.support import GatewayThread
from tests.upstreams import FakeUpstream, JSONReply, RecordedRequest, Reply

SECRET = "sk-test-SECRET-callback-1234"
LUNARY_KEY = "pk-lunary-test"
PATH = "tests.test_observability_callbacks"

seen: list[tuple[dict[str, Any], dict[str, Any] | None, datetime, datetime | None]] = []
seen_lock = threading.Lock()


def record_callback(kwargs: dict[str, Any], response: dict[str, Any] | None, start: datetime,
                    end: datetime | None) -> None:
    with seen_lock:
        seen.append((kwargs, response, start, end))


def raising_callback(*args: Any) -> None:
    raise RuntimeError("callback bug")


def sleeping_callback(*args: Any) -> None:
    time.sleep(2.0)


async def async_sleeping_callback(*args: Any) -> None:
    await asyncio.sleep(2.0)


def request(**fields: Any) -> pb.CompleteRequest:
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}],
            "api_key": SECRET, "extra_headers": {"x-secret": SECRET}, **fields}
    return json_format.ParseDict(body, pb.CompleteRequest())


def stub(gw: GatewayThread) -> pb_grpc.CompletionServiceStub:
    return pb_grpc.CompletionServiceStub(grpc.insecure_channel(gw.address))


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def lunary() -> Iterator[FakeUpstream]:
    def accept(req: RecordedRequest) -> Reply:
        return JSONReply(200, {"ok": True})

    with FakeUpstream(accept) as server:
        yield server


def lunary_events(server: FakeUpstream) -> list[dict[str, Any]]:
    return [event for r in list(server.requests) for event in r.json()["events"]]


def test_lunary_receives_start_end_and_error_events(
        lunary: FakeUpstream, start_gateway: Callable[..., GatewayThread]) -> None:
    env = {"LUNARY_PUBLIC_KEY": LUNARY_KEY, "LUNARY_API_URL": lunary.url}
    gw = start_gateway(env=env, input_callback=("lunary",), success_callback=("lunary",),
                       failure_callback=("lunary",))
    ok = stub(gw).Complete(request(mock_response="Hi Alice", user="alice",
                                   metadata={"parent_run_id": "parent-1", "tags": ["t1"]}), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub(gw).Complete(request(mock_response="litellm.BadRequestError", user="bob"), timeout=10)
    assert wait_until(lambda: len(lunary_events(lunary)) >= 4)
    first = lunary.requests[0]
    assert first.path == "/v1/runs/ingest" and first.headers["authorization"] == f"Bearer {LUNARY_KEY}"
    events = lunary_events(lunary)
    by_run: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        assert event["type"] == "llm" and event["name"] == "openai/gpt-4o-mini"
        by_run.setdefault(event["runId"], []).append(event)
    (good, bad) = sorted(by_run.values(), key=lambda evs: evs[0]["userId"])
    assert [e["event"] for e in good] == ["start", "end"] and [e["event"] for e in bad] == ["start", "error"]
    start, end = good
    assert start["userId"] == "alice" and start["parentRunId"] == "parent-1" and start["tags"] == ["t1"]
    assert start["input"] == [{"role": "user", "content": "Hello"}]
    assert end["tokensUsage"] == {"prompt": ok.usage.prompt_tokens, "completion": ok.usage.completion_tokens}
    assert end["output"]["content"] == "Hi Alice" and end["cost"] == pytest.approx(ok.metadata.cost_usd)
    assert bad[1]["error"]["stack"] == "PROVIDER_BAD_REQUEST" and bad[0]["userId"] == "bob"
    assert all(SECRET not in r.body.decode() and LUNARY_KEY not in r.body.decode() for r in lunary.requests)


def test_lunary_gets_a_stream_with_its_text_and_start_sent_with_end(
        lunary: FakeUpstream, start_gateway: Callable[..., GatewayThread]) -> None:
    gw = start_gateway(env={"LUNARY_PUBLIC_KEY": LUNARY_KEY, "LUNARY_API_URL": lunary.url},
                       success_callback=("lunary",))
    req = pb.StreamCompleteRequest(request=request(mock_response="streamed words here", user="carol"))
    req.stream_options.include_usage = True
    chunks = list(stub(gw).StreamComplete(req, timeout=10))
    assert wait_until(lambda: len(lunary_events(lunary)) >= 2)
    start, end = lunary_events(lunary)
    assert (start["event"], end["event"]) == ("start", "end") and start["runId"] == end["runId"]
    assert end["output"]["content"] == "streamed words here" and end["userId"] == "carol"
    assert end["tokensUsage"]["completion"] == chunks[-1].usage.completion_tokens


def test_log_callback_writes_one_json_line_per_call(start_gateway: Callable[..., GatewayThread]) -> None:
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("llmrpc_server.calls")
    capture = Capture()
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    try:
        gw = start_gateway(success_callback=("log",), failure_callback=("log",))
        resp = stub(gw).Complete(request(mock_response="logged", user="dave"), timeout=10)
        with pytest.raises(grpc.RpcError):
            stub(gw).Complete(request(mock_response="litellm.RateLimitError"), timeout=10)
        assert wait_until(lambda: len(lines) >= 2)
    finally:
        logger.removeHandler(capture)
    ok, failed = (json.loads(line) for line in lines)
    assert ok["event"] == "success" and ok["user"] == "dave" and ok["response_cost"] == resp.metadata.cost_usd
    assert ok["response"]["usage"]["completion_tokens"] == resp.usage.completion_tokens
    assert "messages" not in ok and "message" not in ok["response"]["choices"][0]  # content is opt-in
    assert failed["event"] == "failure" and failed["exception"]["type"] == "RATE_LIMITED"
    assert all(SECRET not in line for line in lines)


def test_custom_callable_gets_litellm_arguments(start_gateway: Callable[..., GatewayThread]) -> None:
    seen.clear()
    gw = start_gateway(input_callback=(f"{PATH}:record_callback",), success_callback=(f"{PATH}.record_callback",))
    resp = stub(gw).Complete(request(mock_response="custom", user="erin", temperature=0.5), timeout=10)
    assert wait_until(lambda: len(seen) >= 2)
    (inp, none, _, _), (kwargs, response, start, end) = sorted(seen, key=lambda s: s[0]["event"])
    assert inp["event"] == "input" and none is None
    assert kwargs["model"] == "openai/gpt-4o-mini" and kwargs["user"] == "erin"
    assert kwargs["messages"] == [{"role": "user", "content": "Hello"}]
    assert kwargs["optional_params"] == {"temperature": 0.5} and kwargs["run_id"] == inp["run_id"]
    assert kwargs["response_cost"] == pytest.approx(resp.metadata.cost_usd)
    assert response is not None and response["choices"][0]["message"]["content"] == "custom"
    assert end is not None and start <= end
    assert SECRET not in repr(seen)


def test_raising_and_sleeping_callbacks_do_not_touch_the_call(start_gateway: Callable[..., GatewayThread]) -> None:
    names = (f"{PATH}:raising_callback", f"{PATH}:sleeping_callback", f"{PATH}:async_sleeping_callback")
    gw = start_gateway(input_callback=names, success_callback=names, failure_callback=names,
                       callback_queue_size=2)
    began = time.monotonic()
    for _ in range(5):
        assert stub(gw).Complete(request(mock_response="fine"), timeout=10).choices[0].message.content == "fine"
    assert time.monotonic() - began < 1.5  # five calls, each with 6 s of callbacks queued
    assert gw.gateway is not None and gw.gateway.observed is not None
    dispatcher = gw.gateway.observed.callbacks
    assert wait_until(lambda: dispatcher.failures[names[0]] + dispatcher.dropped[names[0]] == 10)
    assert dispatcher.failures[names[0]] >= 1
    assert dispatcher.dropped[names[1]] > 0 and dispatcher.dropped[names[2]] > 0


def test_unknown_callback_or_missing_lunary_key_fail_at_start() -> None:
    from llmrpc_server.observability.callbacks import CallbackDispatcher

    from tests.support import gateway_settings

    with pytest.raises(ValueError, match="LUNARY_PUBLIC_KEY"):
        CallbackDispatcher.from_settings(gateway_settings(success_callback=("lunary",)))
    with pytest.raises(ValueError, match="cannot import"):
        CallbackDispatcher.from_settings(gateway_settings(success_callback=("nope.module:fn",)))
    with pytest.raises(ValueError, match="neither a built-in"):
        CallbackDispatcher.from_settings(gateway_settings(success_callback=("langfuse",)))


def _stream_chunks() -> list[pb.StreamCompleteResponse]:
    """A stream as adapters send it: role, text and reasoning pieces, a tool call in fragments, the
    finish chunk, then a usage chunk whose metadata carries the cost."""
    bodies: list[dict[str, Any]] = [
        {"id": "c1", "model": "m", "created": 7, "metadata": {"provider": "mock"},
         "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "hmm "}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hello "}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "world", "tool_calls": [
            {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{\"a\":"}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "1}"}}]}, "finish_reason": "tool_calls"}]},
        {"id": "c1", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}},
    ]
    return [json_format.ParseDict(b, pb.StreamCompleteResponse()) for b in bodies]


@pytest.mark.parametrize("collect", [True, False])
def test_a_stream_is_tallied_as_the_response_it_spelled_out(collect: bool) -> None:
    # Callbacks of a stream get what a unary call would have answered (the server-side
    # stream_chunk_builder); without content-reading callbacks only what spans and metrics use is kept.
    from llmrpc_server.accumulate import accumulate
    from llmrpc_server.observability.backend import StreamTally

    chunks = _stream_chunks()
    tally = StreamTally(collect_text=collect)
    for chunk in chunks:
        tally.add(chunk)
    tally.meta = pb.ResponseMetadata(provider="mock", cost_usd=0.5)
    got = tally.response()
    assert got.metadata == tally.meta and got.usage.total_tokens == 7
    assert [(c.index, c.finish_reason) for c in got.choices] == [(0, "tool_calls")]
    if collect:
        expected = accumulate(chunks)
        expected.metadata.CopyFrom(tally.meta)
        assert got == expected
        message = got.choices[0].message
        assert (message.content, message.reasoning_content) == ("Hello world", "hmm ")
        assert [(t.id, t.function.arguments) for t in message.tool_calls] == [("call_1", '{"a":1}')]
    else:
        assert not got.choices[0].message.HasField("content") and not got.choices[0].message.tool_calls
