"""The adapter interface: every registered adapter satisfies ``ProviderAdapter`` as declared (members
present, typed as declared, method signatures as declared), the in-process transport replaces the
mock special cases, and the byte-fixture codec template (``tests/adapter_codec.py``) applied to real
adapters: OpenAI (SSE), Anthropic (named SSE events) and Ollama (NDJSON), with no server."""

from __future__ import annotations

import asyncio
import inspect
import json
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc_server.executor import Executor
from llmrpc_server.providers import default_adapters, priced_as_requested, transports
from llmrpc_server.providers.base import ErrorKind, HttpCall, ProviderAdapter, ProviderError, Transport
from llmrpc_server.providers.mock import MockTransport
from llmrpc_server.router import Router

from tests import adapter_codec as codec

ADAPTERS = default_adapters()
_METHODS = sorted(n for n, v in vars(ProviderAdapter).items() if inspect.isfunction(v) and not n.startswith("_"))


def _conforms(value: Any, hint: Any) -> bool:
    """``value`` is of the declared type ``hint`` (the shapes the Protocol uses)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin in (frozenset, tuple):  # frozenset[str], tuple[str, ...]
        return isinstance(value, origin) and all(_conforms(v, args[0]) for v in value)
    return isinstance(value, hint)


# ---- the contract, checked on every registered adapter -----------------------------------------


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_registered_adapter_satisfies_the_protocol(name: str) -> None:
    adapter = ADAPTERS[name]
    assert isinstance(adapter, ProviderAdapter) and adapter.name == name
    hints = get_type_hints(ProviderAdapter)
    assert {"name", "supported_params", "inline_media", "transport", "answers_field"} <= set(hints)
    for attr, hint in hints.items():
        value = getattr(adapter, attr)
        assert _conforms(value, hint), f"{name}.{attr} = {value!r} is not a {hint}"
    for method in _METHODS:
        declared = inspect.signature(getattr(ProviderAdapter, method)).parameters.values()
        actual = inspect.signature(getattr(type(adapter), method)).parameters.values()
        assert [(p.name, p.kind) for p in actual] == [(p.name, p.kind) for p in declared], f"{name}.{method}"
    fields = pb.CompleteRequest.DESCRIPTOR.fields_by_name
    if adapter.answers_field is not None:  # a field with presence, or HasField could not ask
        assert fields[adapter.answers_field].has_presence
    assert set(adapter.supported_params) <= set(fields), f"{name}: unknown parameters"


def test_the_contract_check_catches_a_wrongly_typed_member() -> None:
    assert not _conforms(("OPENAI_API_KEY", 3), get_type_hints(ProviderAdapter)["env_keys"])
    assert not _conforms("yes", get_type_hints(ProviderAdapter)["inline_media"])
    assert not _conforms(object(), get_type_hints(ProviderAdapter)["transport"])
    assert _conforms(None, get_type_hints(ProviderAdapter)["transport"])


def test_only_declared_traits_set_the_mock_apart() -> None:
    mounted = transports(ADAPTERS)
    assert set(mounted) == {"mock"} and isinstance(mounted["mock"], MockTransport)
    assert isinstance(mounted["mock"], Transport)
    assert priced_as_requested() == {"mock"}
    assert [a.name for a in ADAPTERS.values() if a.answers_field] == ["mock"]
    assert [a.name for a in ADAPTERS.values() if a.inline_media] == ["ollama_chat", "ollama"]


def test_a_request_field_routes_by_adapter_data() -> None:
    router = Router(ADAPTERS, {"OPENAI_API_KEY": "sk"})
    plain = router.resolve(pb.CompleteRequest(model="openai/gpt-4o"), "openai/gpt-4o")
    mocked = router.resolve(pb.CompleteRequest(model="openai/gpt-4o", mock_response="hi",
                                               api_base="http://elsewhere.test"), "openai/gpt-4o")
    assert plain.adapter.name == "openai" and plain.target.api_base == "https://api.openai.com/v1"
    # an adapter with an in-process transport never leaves the process: the caller's base is not used
    assert (mocked.adapter.name, mocked.target.api_base) == ("mock", "mock://local")


def test_the_executor_sends_mounted_schemes_to_their_transport_only() -> None:
    call = ADAPTERS["mock"].build_request(pb.CompleteRequest(model="mock/x", mock_response="hello there"),
                                          codec.target_for(ADAPTERS["mock"], "x", api_base="mock://local"),
                                          stream=True)

    async def run(executor: Executor) -> list[str]:
        async with executor.stream(call, timeout=5) as upstream:
            events = await upstream.next_events(5) or []
        unary = await executor.send(HttpCall(call.url, call.headers, {**call.body, "stream": False}), timeout=5)
        assert unary.status == 200 and json.loads(unary.body)["choices"][0]["message"]["content"] == "hello there"
        return [e.data for e in events]

    assert asyncio.run(run(Executor(transports=transports(ADAPTERS))))[-1] == "[DONE]"
    with pytest.raises(ProviderError) as unmounted:  # nothing answers mock:// unless it is mounted
        asyncio.run(run(Executor()))
    assert unmounted.value.kind is ErrorKind.BAD_REQUEST


# ---- the codec template: OpenAI (SSE) -----------------------------------------------------------

OPENAI = ADAPTERS["openai"]
REQ = pb.CompleteRequest(model="gpt-4o", messages=[chat_pb2.Message(role="user", content="hi")])


def _sse(*payloads: object) -> bytes:
    return b"".join(f"data: {p if isinstance(p, str) else json.dumps(p)}\n\n".encode() for p in payloads)


def _delta(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"id": "c1", "created": 7, "model": "gpt-4o", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}]}


OPENAI_STREAM = _sse(_delta("Hel"), _delta("lo"), _delta(finish="stop"),
                     {"id": "c1", "created": 7, "model": "gpt-4o", "choices": [],
                      "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}, "[DONE]")


def test_openai_request_bytes() -> None:
    call = codec.build(OPENAI, REQ, stream=True, include_usage=True)
    assert call.url == "http://upstream.test/v1/chat/completions"
    assert call.headers["authorization"] == "Bearer sk-test"
    assert call.body == {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                         "stream_options": {"include_usage": True}}


def test_openai_reply_bytes() -> None:
    body = json.dumps({"id": "c1", "created": 7, "model": "gpt-4o", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}).encode()
    resp = codec.reply(OPENAI, REQ, body)
    assert (resp.id, resp.choices[0].message.content, resp.usage.total_tokens) == ("c1", "Hello", 5)


def test_openai_error_bytes_are_classified() -> None:
    body = b'{"error": {"message": "slow down", "type": "rate_limit_exceeded", "code": "rate_limit_exceeded"}}'
    with pytest.raises(ProviderError) as info:
        codec.reply(OPENAI, REQ, body, status=429, headers={"retry-after": "2", "x-request-id": "req_1"})
    err = info.value
    assert (err.kind, err.status, err.retry_after, err.request_id) == (ErrorKind.RATE_LIMIT, 429, 2.0, "req_1")
    with pytest.raises(ProviderError) as garbage:
        codec.reply(OPENAI, REQ, b"<html>")
    assert garbage.value.kind is ErrorKind.BAD_RESPONSE


@pytest.mark.parametrize("piece", [0, 1, 7])
def test_openai_stream_bytes(piece: int) -> None:
    chunks = codec.stream(OPENAI, REQ, OPENAI_STREAM, piece=piece)
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "Hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.total_tokens == 5 and {c.id for c in chunks} == {"c1"}


def test_openai_stream_cut_before_done_is_a_stream_error() -> None:
    with pytest.raises(ProviderError) as info:
        codec.stream(OPENAI, REQ, OPENAI_STREAM.split(b"data: [DONE]")[0])
    assert info.value.kind is ErrorKind.STREAM_ERROR and info.value.kind.retryable


def test_openai_error_event_mid_stream_raises() -> None:
    with pytest.raises(ProviderError) as info:
        codec.stream(OPENAI, REQ, _sse(_delta("Hel"), {"error": {"message": "boom", "code": 429}}))
    assert info.value.kind is ErrorKind.RATE_LIMIT


# ---- Anthropic (named SSE events) -----------------------------------------------------------------

ANTHROPIC = ADAPTERS["anthropic"]
CLAUDE = pb.CompleteRequest(model="claude-x", messages=[chat_pb2.Message(role="user", content="hi")])
ANTHROPIC_STREAM = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in [
    {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "role": "assistant", "content": [],
                                          "usage": {"input_tokens": 5, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
    {"type": "message_stop"},
])


@pytest.mark.parametrize("piece", [0, 5])
def test_anthropic_stream_bytes(piece: int) -> None:
    chunks = codec.stream(ANTHROPIC, CLAUDE, ANTHROPIC_STREAM, piece=piece)
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "Hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage  # always reported: hiding it is the gateway's job, not the adapter's
    assert (usage.prompt_tokens, usage.completion_tokens, chunks[-1].id) == (5, 2, "msg_1")


def test_anthropic_stream_without_message_stop_is_a_stream_error() -> None:
    with pytest.raises(ProviderError) as info:
        codec.stream(ANTHROPIC, CLAUDE, ANTHROPIC_STREAM.split(b"event: message_stop")[0])
    assert info.value.kind is ErrorKind.STREAM_ERROR


# ---- Ollama (NDJSON) ------------------------------------------------------------------------------

OLLAMA = ADAPTERS["ollama_chat"]
LLAMA = pb.CompleteRequest(model="llama3", messages=[chat_pb2.Message(role="user", content="hi")])
OLLAMA_STREAM = b"".join(json.dumps(line).encode() + b"\n" for line in [
    {"model": "llama3", "message": {"role": "assistant", "content": "<think>hm</think>Hel"}, "done": False},
    {"model": "llama3", "message": {"role": "assistant", "content": "lo"}, "done": False},
    {"model": "llama3", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
     "prompt_eval_count": 4, "eval_count": 2},
])


@pytest.mark.parametrize("piece", [0, 3])
def test_ollama_stream_bytes(piece: int) -> None:
    assert codec.build(OLLAMA, LLAMA, stream=True).stream_format == "ndjson"
    chunks = codec.stream(OLLAMA, LLAMA, OLLAMA_STREAM, piece=piece)
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "Hello"
    assert "".join(c.choices[0].delta.reasoning_content for c in chunks if c.choices) == "hm"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 2)


def test_ollama_stream_without_done_is_a_stream_error() -> None:
    with pytest.raises(ProviderError) as info:
        codec.stream(OLLAMA, LLAMA, OLLAMA_STREAM.rsplit(b"\n", 2)[0] + b"\n")
    assert info.value.kind is ErrorKind.STREAM_ERROR
