"""OpenAI and OpenAI-compatible endpoints end to end: thin client -> real gateway -> local OpenAI server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import llmrpc
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream, closed_port_url
from tests.upstreams import openai as oai
from tests.upstreams.server import ResetReply, StallReply

MESSAGES = [{"role": "user", "content": "Hello, whats the weather in San Francisco??"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oai.default_handler) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream) -> Iterator[GatewayThread]:
    env = {"OPENAI_API_KEY": "sk-server-key", "OPENAI_API_BASE": upstream.url}
    with GatewayThread(gateway_settings(env, stream_idle_timeout=1.0)) as gw:
        yield gw


@pytest.fixture
def client(gateway: GatewayThread, upstream: FakeUpstream) -> Iterator[llmrpc.Client]:
    upstream.reset()
    c = llmrpc.Client(gateway.address)
    yield c
    c.close()


def test_litellm_example_runs_against_an_openai_compatible_server(
    gateway: GatewayThread, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's example, verbatim apart from the import, through LLMRPC_SERVER."""
    upstream.reset()
    monkeypatch.setenv("LLMRPC_SERVER", gateway.address)
    try:
        response = llmrpc.completion(
            model="openai/mistral", api_base=upstream.url, api_key="sk-1234",
            temperature=0.7, messages=MESSAGES, user="user-123", num_retries=5)
        print(response)
    except openai.OpenAIError as e:
        should_retry = llmrpc._should_retry(e.status_code)
        print(f"should_retry: {should_retry}")
        print(e)
        raise
    out = capsys.readouterr().out
    assert "ModelResponse(" in out and "Hello, whats the weather" in out
    sent = upstream.requests[-1]
    assert sent.headers["authorization"] == "Bearer sk-1234"
    assert sent.json() == {"model": "mistral", "messages": MESSAGES, "temperature": 0.7, "user": "user-123"}
    dumped = response.model_dump()
    for key in ("id", "created", "model", "object", "system_fingerprint", "choices", "usage"):
        assert key in dumped
    message = dumped["choices"][0]["message"]
    for key in ("content", "role", "tool_calls", "function_call", "reasoning_content", "thinking_blocks"):
        assert key in message
    usage = dumped["usage"]
    for key in ("completion_tokens", "prompt_tokens", "total_tokens", "completion_tokens_details",
                "prompt_tokens_details", "cache_creation_input_tokens", "cache_read_input_tokens"):
        assert key in usage
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    ChatCompletion.model_validate(dumped)


def test_unary_response_shape_and_metadata(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.chat_completion("Sunny.", reasoning_content="Checked the sky.",
                                         usage=oai.default_usage(20, 5, reasoning_tokens=3)))
    resp = client.completion(model="openai/gpt-4o-mini", messages=MESSAGES, max_tokens=50, seed=7,
                             stop="\n", logit_bias={"50256": -100}, top_k=3)
    assert resp.choices[0].message.content == "Sunny."
    assert resp["choices"][0]["message"]["reasoning_content"] == "Checked the sky."
    assert resp.usage.completion_tokens_details.reasoning_tokens == 3
    assert resp.choices[0].finish_reason == "stop"
    assert resp._hidden_params["custom_llm_provider"] == "openai"
    assert resp._hidden_params["attempts"] == 1
    assert resp._hidden_params["provider_request_id"] == "req_fake123"
    body = upstream.requests[-1].json()
    assert body["stop"] == ["\n"] and body["seed"] == 7 and body["logit_bias"] == {"50256": -100}
    assert body["top_k"] == 3  # unknown kwargs pass through extra_body, as in LiteLLM
    assert upstream.requests[-1].headers["authorization"] == "Bearer sk-server-key"
    ChatCompletion.model_validate(resp.model_dump())


def test_well_known_model_needs_no_prefix(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    resp = client.completion(model="gpt-4o-mini", messages=MESSAGES)
    assert resp._hidden_params["custom_llm_provider"] == "openai"
    assert upstream.requests[-1].json()["model"] == "gpt-4o-mini"


def test_stream_with_usage_validates_as_openai_chunks(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.chat_stream(["Hel", "lo", " there"], reasoning_pieces=["thinking..."]))
    chunks = list(client.completion(model="openai/gpt-4o-mini", messages=MESSAGES, stream=True,
                                    stream_options={"include_usage": True}))
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk.model_dump())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there"
    assert chunks[-1].choices[0].finish_reason is None and chunks[-1].usage.total_tokens == 12
    assert upstream.requests[-1].json()["stream_options"] == {"include_usage": True}
    rebuilt = llmrpc.stream_chunk_builder(chunks)
    assert rebuilt.choices[0].message.content == "Hello there"
    assert rebuilt.choices[0].message.reasoning_content == "thinking..."
    assert rebuilt.usage.total_tokens == 12


def test_stream_without_include_usage_has_no_usage(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.chat_stream(["a", "b"], include_usage=False))
    chunks = list(client.completion(model="openai/gpt-4o-mini", messages=MESSAGES, stream=True))
    assert all(getattr(c, "usage", None) is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_tool_call_round_trip(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False, "minProperties": 1}}}]
    upstream.enqueue(oai.chat_stream([], tool_calls=[("call_1", "get_weather", ['{"ci', 'ty": "Oslo"}']),
                                                     ("call_2", "get_weather", '{"city": "Bergen"}')]))
    chunks = list(client.completion(model="openai/gpt-4o", messages=MESSAGES, tools=tools, tool_choice="auto",
                                    parallel_tool_calls=True, stream=True))
    assistant = llmrpc.stream_chunk_builder(chunks).choices[0].message
    assert [c.function.arguments for c in assistant.tool_calls] == ['{"city": "Oslo"}', '{"city": "Bergen"}']
    first = upstream.requests[-1].json()
    assert first["tools"][0]["function"]["parameters"]["minProperties"] == 1  # ints survive Struct doubles
    assert first["tool_choice"] == "auto" and first["parallel_tool_calls"] is True
    upstream.enqueue(oai.chat_completion("Oslo 7C, Bergen 9C."))
    history = [*MESSAGES, assistant,
               {"role": "tool", "tool_call_id": "call_1", "content": "7C"},
               {"role": "tool", "tool_call_id": "call_2", "content": "9C"}]
    final = client.completion(model="openai/gpt-4o", messages=history, tools=tools)
    assert final.choices[0].message.content == "Oslo 7C, Bergen 9C."
    sent = upstream.requests[-1].json()["messages"]
    assert sent[1]["tool_calls"][0] == {"id": "call_1", "type": "function",
                                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "7C"}


def test_unary_tool_calls_and_named_tool_choice(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    upstream.enqueue(oai.chat_completion(None, tool_calls=[("call_9", "f", "{}")]))
    resp = client.completion(model="openai/gpt-4o", messages=MESSAGES, tools=tools,
                             tool_choice={"type": "function", "function": {"name": "f"}})
    assert resp.choices[0].finish_reason == "tool_calls"
    assert resp.choices[0].message.content is None
    assert resp.choices[0].message.tool_calls[0].id == "call_9"
    assert upstream.requests[-1].json()["tool_choice"] == {"type": "function", "function": {"name": "f"}}


def test_json_schema_response_format(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "strict": True, "schema": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}
    upstream.enqueue(oai.chat_completion('{"n": 3}'))
    resp = client.completion(model="openai/gpt-4o", messages=MESSAGES, response_format=fmt)
    assert json.loads(resp.choices[0].message.content) == {"n": 3}
    assert upstream.requests[-1].json()["response_format"] == fmt


# ---- the error table --------------------------------------------------------------------------


ERROR_ROWS: list[tuple[Any, type[Exception], int | None]] = [
    (oai.error(400, "bad things"), llmrpc.BadRequestError, 400),
    (oai.context_length_exceeded(), llmrpc.ContextWindowExceededError, 400),
    (oai.content_policy(), llmrpc.ContentPolicyViolationError, 400),
    (oai.error(403, "no access", type="permission_error"), llmrpc.PermissionDeniedError, 403),
    (oai.model_not_found(), llmrpc.NotFoundError, 404),
    (oai.error(409, "conflict"), llmrpc.ConflictError, 409),
    (oai.error(413, "too large"), llmrpc.BadRequestError, 413),
    (oai.error(422, "unprocessable"), llmrpc.UnprocessableEntityError, 422),
    (oai.rate_limited(retry_after=7), llmrpc.RateLimitError, 429),
    (oai.insufficient_quota(), llmrpc.RateLimitError, 429),
    (oai.server_error(500), llmrpc.InternalServerError, 500),
    (oai.server_error(502), llmrpc.BadGatewayError, 502),
    (oai.server_error(503), llmrpc.ServiceUnavailableError, 503),
    (oai.error(504, "gateway timeout", type="timeout"), llmrpc.Timeout, None),
    (oai.error(529, "Overloaded", type="overloaded_error"), llmrpc.InternalServerError, 529),
]


@pytest.mark.parametrize(("reply", "exc_type", "status"), ERROR_ROWS)
def test_error_table(client: llmrpc.Client, upstream: FakeUpstream, reply: Any, exc_type: type[Exception],
                     status: int | None) -> None:
    upstream.enqueue(reply)
    with pytest.raises(exc_type) as info:
        client.completion(model="openai/gpt-4o", messages=MESSAGES, num_retries=0)
    err = info.value
    assert isinstance(err, openai.OpenAIError)
    assert err.llm_provider == "openai"  # type: ignore[attr-defined]
    if status is not None:
        assert err.status_code == status  # type: ignore[attr-defined]


def test_rate_limit_carries_retry_info(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.rate_limited(retry_after=7))
    with pytest.raises(llmrpc.RateLimitError) as info:
        client.completion(model="openai/gpt-4o", messages=MESSAGES, num_retries=0)
    assert info.value.retry_after == 7
    assert info.value.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_upstream_401_with_server_key_is_failed_precondition(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.invalid_api_key())
    with pytest.raises(llmrpc.AuthenticationError) as info:
        client.completion(model="openai/gpt-4o", messages=MESSAGES)
    assert info.value.grpc_code == grpc.StatusCode.FAILED_PRECONDITION


def test_upstream_401_with_caller_key_is_unauthenticated(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.invalid_api_key())
    with pytest.raises(llmrpc.AuthenticationError) as info:
        client.completion(model="openai/gpt-4o", messages=MESSAGES, api_key="sk-wrong")
    assert info.value.grpc_code == grpc.StatusCode.UNAUTHENTICATED


def test_connection_refused_is_api_connection_error(client: llmrpc.Client) -> None:
    with pytest.raises(llmrpc.APIConnectionError) as info:
        client.completion(model="openai/gpt-4o", messages=MESSAGES, api_base=closed_port_url(), api_key="sk-c")
    assert not isinstance(info.value, llmrpc.Timeout)
    assert info.value.grpc_code == grpc.StatusCode.UNAVAILABLE


def test_reset_mid_body_is_api_connection_error(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(ResetReply(after_bytes=b'{"id": "chatcmpl-1", "choi'))
    with pytest.raises(llmrpc.APIConnectionError):
        client.completion(model="openai/gpt-4o", messages=MESSAGES)


def test_missing_server_key_names_the_env_var(start_gateway: Any) -> None:
    gw = start_gateway()
    with llmrpc.Client(gw.address) as c, pytest.raises(llmrpc.AuthenticationError) as info:
        c.completion(model="openai/gpt-4o", messages=MESSAGES)
    assert "OPENAI_API_KEY" in str(info.value)


# ---- retries, deadlines, cancellation -----------------------------------------------------------


def test_retries_honour_retry_after_and_count_attempts(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.rate_limited(retry_after_ms=150), oai.server_error(503), oai.chat_completion("ok"))
    started = time.monotonic()
    resp = client.completion(model="openai/gpt-4o", messages=MESSAGES, num_retries=3)
    assert resp.choices[0].message.content == "ok"
    assert time.monotonic() - started >= 0.15
    assert resp._hidden_params["attempts"] == 3
    outcomes = [a["outcome"] for a in resp._hidden_params["attempt_log"]]
    assert outcomes == ["RATE_LIMITED", "PROVIDER_UNAVAILABLE", "ok"]
    assert len(upstream.requests) == 3


@pytest.mark.parametrize("reply", [oai.error(400, "bad"), oai.invalid_api_key(), oai.error(403, "no"),
                                   oai.model_not_found(), oai.error(422, "no")])
def test_client_errors_are_never_retried(client: llmrpc.Client, upstream: FakeUpstream, reply: Any) -> None:
    upstream.enqueue(reply)
    with pytest.raises(openai.APIStatusError):
        client.completion(model="openai/gpt-4o", messages=MESSAGES, num_retries=3)
    assert len(upstream.requests) == 1


def test_retries_stop_when_exhausted(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(*[oai.server_error(500) for _ in range(3)])
    with pytest.raises(llmrpc.InternalServerError) as info:
        client.completion(model="openai/gpt-4o", messages=MESSAGES, num_retries=2)
    assert len(upstream.requests) == 3
    assert info.value.metadata["attempts"] == "3"


def test_timeout_argument_bounds_the_call(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(StallReply(10))
    started = time.monotonic()
    with pytest.raises(llmrpc.Timeout):
        client.completion(model="openai/gpt-4o", messages=MESSAGES, timeout=0.5)
    assert time.monotonic() - started < 3


def test_caller_grpc_deadline_is_deadline_exceeded(gateway: GatewayThread, upstream: FakeUpstream) -> None:
    from llmrpc.v1 import chat_pb2
    from llmrpc.v1 import completion_service_pb2 as pb
    from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

    upstream.reset()
    upstream.enqueue(StallReply(10))
    req = pb.CompleteRequest(model="openai/gpt-4o", messages=[chat_pb2.Message(role="user", content="x")])
    with grpc.insecure_channel(gateway.address) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.CompletionServiceStub(channel).Complete(req, timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_breaking_out_of_a_stream_cancels_the_upstream(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.chat_stream([f"w{i} " for i in range(200)], delay=0.02))
    stream = client.completion(model="openai/gpt-4o", messages=MESSAGES, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    assert upstream.wait_for(lambda: upstream.disconnects >= 1, timeout=5)


def test_idle_stream_ends_with_a_clear_status(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.chat_stream(["a", "b"], then="hang", done=False))
    got: list[Any] = []
    with pytest.raises(llmrpc.Timeout) as info:
        for chunk in client.completion(model="openai/gpt-4o", messages=MESSAGES, stream=True):
            got.append(chunk)
    assert got and info.value.reason == "STREAM_IDLE_TIMEOUT"


def test_mid_stream_error_event_after_partial_output(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.chat_stream(["one ", "two ", "three"], error_after=2))
    got: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in client.completion(model="openai/gpt-4o", messages=MESSAGES, stream=True):
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "one two "


def test_get_supported_openai_params_answers_from_the_server(client: llmrpc.Client) -> None:
    params = client.get_supported_openai_params(model="openai/gpt-4o")
    assert "temperature" in params and "tools" in params and "thinking" not in params


async def test_acompletion_unary_and_stream(gateway: GatewayThread, upstream: FakeUpstream) -> None:
    upstream.reset()
    client = llmrpc.Client(gateway.address)
    resp = await client.acompletion(model="openai/gpt-4o", messages=MESSAGES)
    assert resp.choices[0].message.content
    upstream.enqueue(oai.chat_stream(["x", "y"]))
    stream = await client.acompletion(model="openai/gpt-4o", messages=MESSAGES, stream=True,
                                      stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "xy"
    client.close()


def test_cancelling_a_unary_call_closes_the_upstream_request_by_its_timeout(gateway: GatewayThread,
                                                                           upstream: FakeUpstream) -> None:
    """pyreqwest runs a request whose response head has not arrived to its end even when its caller is
    cancelled, so the executor gives every request the call's own timeout: the upstream connection
    closes when that passes (here 1.5 s), not when the upstream finally answers (10 s)."""
    from llmrpc.v1 import chat_pb2
    from llmrpc.v1 import completion_service_pb2 as pb
    from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

    upstream.reset()
    upstream.enqueue(StallReply(10))
    req = pb.CompleteRequest(model="openai/gpt-4o", messages=[chat_pb2.Message(role="user", content="x")],
                             timeout=1.5)
    with grpc.insecure_channel(gateway.address) as channel:
        future = pb_grpc.CompletionServiceStub(channel).Complete.future(req, timeout=30)
        assert upstream.wait_for(lambda: len(upstream.requests) == 1, timeout=5)
        future.cancel()
        assert upstream.wait_for(lambda: upstream.disconnects >= 1, timeout=5)


def test_stream_metadata_latency_request_id_and_cost(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.chat_stream(["a", "b"], headers={"x-request-id": "req_stream1"}))
    stream = client.completion(model="openai/gpt-4o-mini", messages=MESSAGES, stream=True,
                               stream_options={"include_usage": True})
    chunks = list(stream)
    first = chunks[0]._hidden_params
    assert first["upstream_latency_ms"] > 0 and first["provider_request_id"] == "req_stream1"
    assert first["attempts"] == 1
    assert chunks[-1]._hidden_params["response_cost"] > 0  # priced from the usage chunk
    assert stream._hidden_params["response_cost"] == chunks[-1]._hidden_params["response_cost"]
