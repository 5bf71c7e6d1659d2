"""Streams: chunk conversion, early-exit cancellation, mid-stream errors, stream_chunk_builder."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import llmrpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from llmrpc._decode import chunk_from_proto
from llmrpc.v1 import chat_pb2, completion_service_pb2, completion_service_pb2_grpc, usage_pb2
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.support import serve_servicer

USER = {"role": "user", "content": "hi"}
Chunk = completion_service_pb2.StreamCompleteResponse

# ---------------------------------------------------------------- fake gateway

StreamHandler = Callable[[Any, grpc.ServicerContext], Iterator[Any]]


class FakeGateway(completion_service_pb2_grpc.CompletionServiceServicer):
    """Streams what the installed handler yields; notes when a call ends cancelled."""

    def __init__(self) -> None:
        self.handler: StreamHandler = lambda request, context: iter(script())
        self.requests: list[Any] = []
        self.cancelled = threading.Event()

    def StreamComplete(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self.requests.append(request)
        yield from self.handler(request, context)


@pytest.fixture(scope="module")
def gateway_server() -> Iterator[tuple[FakeGateway, str]]:
    servicer = FakeGateway()
    with serve_servicer(servicer) as address:
        yield servicer, address


@pytest.fixture
def gateway(gateway_server: tuple[FakeGateway, str]) -> FakeGateway:
    servicer = gateway_server[0]
    servicer.__init__()  # type: ignore[misc]
    return servicer


@pytest.fixture
def client(gateway_server: tuple[FakeGateway, str]) -> Iterator[llmrpc.Client]:
    with llmrpc.Client(gateway_server[1]) as c:
        yield c


def chunk(**fields: Any) -> Chunk:
    return Chunk(id="chatcmpl-s", object="chat.completion.chunk", created=7, model="gpt-4o", **fields)


def delta_chunk(finish_reason: str | None = None, **delta: Any) -> Chunk:
    choice = chat_pb2.ChunkChoice(index=0, delta=chat_pb2.Delta(**delta))
    if finish_reason is not None:
        choice.finish_reason = finish_reason
    return chunk(choices=[choice])


def script() -> list[Chunk]:
    """A stream with text, reasoning, thinking, a tool call in pieces and a usage chunk."""
    first = delta_chunk(role="assistant", content="")
    first.metadata.CopyFrom(
        completion_service_pb2.ResponseMetadata(provider="anthropic", attempts=1, cost_usd=0.5)
    )
    return [
        first,
        delta_chunk(
            reasoning_content="Let me ",
            thinking_blocks=[chat_pb2.ThinkingBlock(type="thinking", thinking="Let me ")],
        ),
        delta_chunk(
            reasoning_content="think.",
            thinking_blocks=[chat_pb2.ThinkingBlock(type="thinking", thinking="think.")],
        ),
        delta_chunk(thinking_blocks=[chat_pb2.ThinkingBlock(type="thinking", signature="sig1")]),
        delta_chunk(content="Hello"),
        delta_chunk(content=" world"),
        delta_chunk(
            tool_calls=[
                chat_pb2.ToolCallDelta(
                    index=0,
                    id="call_1",
                    type="function",
                    function=chat_pb2.FunctionCallDelta(name="f", arguments='{"a"'),
                )
            ]
        ),
        delta_chunk(
            tool_calls=[
                chat_pb2.ToolCallDelta(index=0, function=chat_pb2.FunctionCallDelta(arguments=": 1}"))
            ]
        ),
        delta_chunk(finish_reason="tool_calls"),
        chunk(usage=usage_pb2.Usage(prompt_tokens=5, completion_tokens=9, total_tokens=14)),
    ]


def rich_error(code: grpc.StatusCode, message: str, reason: str) -> grpc.Status:
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain="llmrpc.dev", metadata={"provider": "anthropic"})
    )
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[info]))


def until_cancelled(gateway: FakeGateway, chunks: list[Chunk]) -> StreamHandler:
    """Yield the chunks, then hold the stream open for 10 s.

    The call can only end sooner by being cancelled, so its termination callback
    firing within the test's wait means the client cancelled it.
    """

    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        context.add_callback(gateway.cancelled.set)
        yield from chunks
        deadline = time.monotonic() + 10
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)

    return handler


def failing_after(chunks: list[Chunk], status: grpc.Status) -> StreamHandler:
    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from chunks
        context.abort_with_status(status)

    return handler


# ---------------------------------------------------------------- sync streams


def test_stream_yields_converted_chunks(gateway: FakeGateway, client: llmrpc.Client) -> None:
    stream = client.completion(
        "anthropic/claude-x", [USER], stream=True, stream_options={"include_usage": True}
    )
    assert isinstance(stream, llmrpc.CustomStreamWrapper)
    chunks = list(stream)
    assert len(chunks) == 10 and all(isinstance(c, llmrpc.ModelResponseStream) for c in chunks)
    assert all(c.object == "chat.completion.chunk" and c.id == "chatcmpl-s" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[1].choices[0].delta.reasoning_content == "Let me "
    assert chunks[4].choices[0].delta.content == "Hello"
    call = chunks[6].choices[0].delta.tool_calls
    assert call is not None and (call[0].id, call[0].index, call[0].function.name) == ("call_1", 0, "f")
    assert chunks[8].choices[0].finish_reason == "tool_calls"
    assert _usage_choice(chunks[9]) and chunks[9].usage is not None and chunks[9].usage.total_tokens == 14
    for c in chunks:
        assert (
            c._hidden_params["custom_llm_provider"] == "anthropic"
            and c._hidden_params["response_cost"] == 0.5
        )
    assert stream._hidden_params["attempts"] == 1 and stream.custom_llm_provider == "anthropic"
    assert stream.chunks == chunks
    sent = gateway.requests[0]
    assert sent.stream_options.include_usage is True and sent.request.model == "anthropic/claude-x"


def test_stream_options_unset_when_not_given(gateway: FakeGateway, client: llmrpc.Client) -> None:
    list(client.completion("openai/gpt-4o", [USER], stream=True))
    assert not gateway.requests[0].HasField("stream_options")


def test_chunk_builder_rebuilds_stream(gateway: FakeGateway, client: llmrpc.Client) -> None:
    stream = client.completion("anthropic/claude-x", [USER], stream=True)
    assert isinstance(stream, llmrpc.CustomStreamWrapper)
    resp = llmrpc.stream_chunk_builder(list(stream), messages=[USER])
    assert resp is not None
    msg = resp.choices[0].message
    assert (resp.id, resp.created, resp.model, resp.object) == ("chatcmpl-s", 7, "gpt-4o", "chat.completion")
    assert msg.content == "Hello world" and msg.reasoning_content == "Let me think."
    assert msg.thinking_blocks == [{"type": "thinking", "thinking": "Let me think.", "signature": "sig1"}]
    assert msg.tool_calls is not None and msg.tool_calls[0].function.arguments == '{"a": 1}'
    assert (msg.tool_calls[0].id, msg.tool_calls[0].function.name) == ("call_1", "f")
    assert resp.choices[0].finish_reason == "tool_calls"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (5, 9, 14)
    assert resp._hidden_params["custom_llm_provider"] == "anthropic"
    ChatCompletion.model_validate(resp.model_dump())


def test_early_break_and_close_cancels_rpc(gateway: FakeGateway, client: llmrpc.Client) -> None:
    gateway.handler = until_cancelled(gateway, script()[:3])
    stream = client.completion("openai/gpt-4o", [USER], stream=True)
    assert isinstance(stream, llmrpc.CustomStreamWrapper)
    for _ in stream:
        break
    stream.close()
    assert gateway.cancelled.wait(5)
    assert list(stream) == []  # a closed stream ends quietly
    stream.close()  # idempotent


def test_with_block_cancels_rpc(gateway: FakeGateway, client: llmrpc.Client) -> None:
    gateway.handler = until_cancelled(gateway, script()[:2])
    stream = client.completion("openai/gpt-4o", [USER], stream=True)
    assert isinstance(stream, llmrpc.CustomStreamWrapper)
    with stream:
        next(stream)
    assert gateway.cancelled.wait(5)


def test_dropped_stream_cancels_rpc(gateway: FakeGateway, client: llmrpc.Client) -> None:
    gateway.handler = until_cancelled(gateway, script()[:2])
    stream = client.completion("openai/gpt-4o", [USER], stream=True)
    del stream
    gc.collect()
    assert gateway.cancelled.wait(5)


def test_mid_stream_error_keeps_yielded_chunks(gateway: FakeGateway, client: llmrpc.Client) -> None:
    status = rich_error(grpc.StatusCode.UNAVAILABLE, "overloaded mid-stream", "PROVIDER_STREAM_ERROR")
    gateway.handler = failing_after(script()[:5], status)
    stream = client.completion("anthropic/claude-x", [USER], stream=True)
    assert isinstance(stream, llmrpc.CustomStreamWrapper)
    seen: list[llmrpc.ModelResponseStream] = []
    with pytest.raises(llmrpc.APIError) as caught:
        for c in stream:
            seen.append(c)
    assert len(seen) == 5
    assert caught.value.reason == "PROVIDER_STREAM_ERROR" and caught.value.llm_provider == "anthropic"
    assert str(caught.value.request.url).endswith("/StreamComplete")
    assert list(stream) == []


def test_error_before_first_chunk_raises_from_completion(gateway: FakeGateway, client: llmrpc.Client) -> None:
    gateway.handler = failing_after(
        [], rich_error(grpc.StatusCode.UNAUTHENTICATED, "bad key", "PROVIDER_AUTH_FAILED")
    )
    with pytest.raises(llmrpc.AuthenticationError):
        client.completion("openai/gpt-4o", [USER], stream=True)


def test_empty_stream(gateway: FakeGateway, client: llmrpc.Client) -> None:
    gateway.handler = lambda request, context: iter(())
    stream = client.completion("openai/gpt-4o", [USER], stream=True)
    assert isinstance(stream, llmrpc.CustomStreamWrapper)
    assert list(stream) == []


def test_module_level_stream(
    gateway: FakeGateway, gateway_server: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMRPC_SERVER", gateway_server[1])
    stream = llmrpc.completion(model="openai/gpt-4o", messages=[USER], stream=True)
    assert isinstance(stream, llmrpc.CustomStreamWrapper)
    assert sum(1 for _ in stream) == 10


# ---------------------------------------------------------------- async streams


async def test_async_stream(gateway: FakeGateway, client: llmrpc.Client) -> None:
    stream = await client.acompletion(
        "anthropic/claude-x", [USER], stream=True, stream_options={"include_usage": True}
    )
    assert isinstance(stream, llmrpc.AsyncCustomStreamWrapper)
    chunks = [c async for c in stream]
    assert len(chunks) == 10 and _usage_choice(chunks[-1])
    assert chunks[5]._hidden_params["custom_llm_provider"] == "anthropic"
    resp = llmrpc.stream_chunk_builder(chunks)
    assert resp is not None and resp.choices[0].message.content == "Hello world"


async def test_async_aclose_cancels_rpc(gateway: FakeGateway, client: llmrpc.Client) -> None:
    gateway.handler = until_cancelled(gateway, script()[:3])
    stream = await client.acompletion("openai/gpt-4o", [USER], stream=True)
    assert isinstance(stream, llmrpc.AsyncCustomStreamWrapper)
    async for _ in stream:
        break
    await stream.aclose()
    # Wait off the loop: grpc.aio needs the loop running to send the cancellation.
    assert await asyncio.to_thread(gateway.cancelled.wait, 5)
    assert [c async for c in stream] == []


async def test_async_context_manager_cancels_rpc(gateway: FakeGateway, client: llmrpc.Client) -> None:
    gateway.handler = until_cancelled(gateway, script()[:2])
    stream = await client.acompletion("openai/gpt-4o", [USER], stream=True)
    assert isinstance(stream, llmrpc.AsyncCustomStreamWrapper)
    async with stream:
        await stream.__anext__()
    assert await asyncio.to_thread(gateway.cancelled.wait, 5)


async def test_async_mid_stream_error(gateway: FakeGateway, client: llmrpc.Client) -> None:
    status = rich_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", "RATE_LIMITED")
    gateway.handler = failing_after(script()[:3], status)
    stream = await client.acompletion("openai/gpt-4o", [USER], stream=True)
    assert isinstance(stream, llmrpc.AsyncCustomStreamWrapper)
    seen = []
    with pytest.raises(llmrpc.RateLimitError):
        async for c in stream:
            seen.append(c)
    assert len(seen) == 3


async def test_async_error_before_first_chunk(gateway: FakeGateway, client: llmrpc.Client) -> None:
    gateway.handler = failing_after([], rich_error(grpc.StatusCode.NOT_FOUND, "no model", "MODEL_NOT_FOUND"))
    with pytest.raises(llmrpc.NotFoundError):
        await llmrpc.acompletion("openai/nope", [USER], stream=True, client=client)


# ---------------------------------------------------------------- chunk shapes


def test_openai_validates_chunks() -> None:
    hidden: dict[str, Any] = {}
    for pb in script():
        dumped = chunk_from_proto(pb, hidden).model_dump()
        parsed = ChatCompletionChunk.model_validate(dumped)
        assert parsed.id == "chatcmpl-s"
    usage_chunk = chunk_from_proto(script()[-1], hidden).model_dump()
    assert usage_chunk["choices"] == [_EMPTY_CHOICE] and usage_chunk["usage"]["total_tokens"] == 14
    reasoning = chunk_from_proto(script()[1], hidden).model_dump()
    assert reasoning["choices"][0]["delta"]["reasoning_content"] == "Let me "
    assert "usage" not in reasoning and "logprobs" not in reasoning["choices"][0]
    text = chunk_from_proto(script()[4], hidden).model_dump()
    assert text["choices"][0]["delta"] == {
        "content": "Hello",
        "role": None,
        "function_call": None,
        "tool_calls": None,
        "refusal": None,
    }
    assert text["choices"][0]["finish_reason"] is None


# ---------------------------------------------------------------- stream_chunk_builder (pure)


def _dict_chunk(index: int = 0, finish_reason: str | None = None, **delta: Any) -> dict[str, Any]:
    return {
        "id": "",
        "created": 3,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}],
    }


def test_builder_empty_is_none() -> None:
    assert llmrpc.stream_chunk_builder([]) is None


def test_builder_tool_calls_grouped_by_index() -> None:
    chunks = [
        _dict_chunk(role="assistant"),
        _dict_chunk(
            tool_calls=[
                {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": ""}}
            ]
        ),
        _dict_chunk(tool_calls=[{"index": 1, "id": "b", "type": "function", "function": {"name": "g"}}]),
        _dict_chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"x":'}}]),
        _dict_chunk(tool_calls=[{"index": 0, "function": {"arguments": "1}"}}]),
        _dict_chunk(finish_reason="tool_calls"),
    ]
    chunks[2]["id"] = "chatcmpl-first-nonempty"
    resp = llmrpc.stream_chunk_builder(chunks)
    assert resp is not None and resp.id == "chatcmpl-first-nonempty"
    calls = resp.choices[0].message.tool_calls
    assert calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("a", "f", '{"x":1}'),
        ("b", "g", "{}"),
    ]
    assert resp.choices[0].message.content is None
    assert resp.choices[0].finish_reason == "tool_calls"
    assert resp.usage.total_tokens == 0


def test_builder_thinking_blocks_merge() -> None:
    chunks = [
        _dict_chunk(thinking_blocks=[{"type": "thinking", "thinking": "a", "signature": None}]),
        _dict_chunk(thinking_blocks=[{"type": "thinking", "thinking": "b"}]),
        _dict_chunk(thinking_blocks=[{"type": "thinking", "thinking": "", "signature": "s1"}]),
        _dict_chunk(thinking_blocks=[{"type": "redacted_thinking", "data": "enc"}]),
        _dict_chunk(thinking_blocks=[{"type": "thinking", "thinking": "c"}]),
        _dict_chunk(thinking_blocks=[{"type": "thinking", "thinking": "d", "signature": "s2"}]),
        _dict_chunk(content="done"),
    ]
    resp = llmrpc.stream_chunk_builder(chunks)
    assert resp is not None
    assert resp.choices[0].message.thinking_blocks == [
        {"type": "thinking", "thinking": "ab", "signature": "s1"},
        {"type": "redacted_thinking", "data": "enc"},
        {"type": "thinking", "thinking": "cd", "signature": "s2"},
    ]
    assert resp.choices[0].finish_reason == "stop"  # default when none was seen


def test_builder_usage_last_and_choices_by_index() -> None:
    chunks = [
        _dict_chunk(0, content="A"),
        _dict_chunk(1, content="B"),
        _dict_chunk(0, content="a", finish_reason="length"),
        _dict_chunk(1, content="b", finish_reason="stop"),
        {
            "id": "x",
            "created": 3,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        },
        {
            "id": "x",
            "created": 3,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
        },
    ]
    resp = llmrpc.stream_chunk_builder(chunks)
    assert resp is not None
    assert [(c.index, c.message.content, c.finish_reason) for c in resp.choices] == [
        (0, "Aa", "length"),
        (1, "Bb", "stop"),
    ]
    assert resp.usage.total_tokens == 5 and resp.id == "x"
    ChatCompletion.model_validate(resp.model_dump())


# LiteLLM's usage chunk carries one empty choice, so chunk.choices[0].delta never raises.
_EMPTY_CHOICE = {"finish_reason": None, "index": 0,
                 "delta": {"content": None, "role": None, "function_call": None, "tool_calls": None, "refusal": None}}


def _usage_choice(chunk: llmrpc.ModelResponseStream) -> bool:
    return [c.model_dump() for c in chunk.choices] == [_EMPTY_CHOICE]
