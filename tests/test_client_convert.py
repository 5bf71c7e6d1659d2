"""completion() arguments -> CompleteRequest, and CompleteResponse -> ModelResponse."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import llmrpc
import pytest
from google.protobuf import json_format
from llmrpc import _client
from llmrpc._convert import build_request
from llmrpc._decode import response_from_proto, struct_to_dict
from llmrpc.v1 import chat_pb2, completion_service_pb2, completion_service_pb2_grpc, usage_pb2
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from pydantic import BaseModel

from tests.support import serve_servicer

USER = {"role": "user", "content": "hi"}


def request(**params: Any) -> completion_service_pb2.CompleteRequest:
    params.setdefault("model", "openai/gpt-4o")
    params.setdefault("messages", [USER])
    return build_request(params)


# ---------------------------------------------------------------- fake gateway

Handler = Callable[[Any, grpc.ServicerContext], Any]


class FakeGateway(completion_service_pb2_grpc.CompletionServiceServicer):
    """Records requests (and their metadata and deadline), answers with a canned response."""

    def __init__(self) -> None:
        self.response = completion_service_pb2.CompleteResponse()
        self.requests: list[Any] = []
        self.time_remaining: list[float | None] = []
        self.metadata: list[dict[str, str]] = []

    def Complete(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record(request, context)
        return self.response

    def GetSupportedParams(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record(request, context)
        return completion_service_pb2.GetSupportedParamsResponse(
            provider="openai", provider_model="gpt-4o", supported_params=["temperature", "tools"]
        )

    def _record(self, request: Any, context: grpc.ServicerContext) -> None:
        self.requests.append(request)
        self.time_remaining.append(context.time_remaining())
        self.metadata.append(dict(context.invocation_metadata()))


@pytest.fixture(scope="module")
def gateway_server() -> Iterator[tuple[FakeGateway, str]]:
    servicer = FakeGateway()
    with serve_servicer(servicer) as address:
        yield servicer, address


@pytest.fixture
def gateway(gateway_server: tuple[FakeGateway, str]) -> FakeGateway:
    servicer = gateway_server[0]
    servicer.__init__()  # type: ignore[misc]
    servicer.response = full_response()
    return servicer


@pytest.fixture
def target(gateway_server: tuple[FakeGateway, str]) -> str:
    return gateway_server[1]


# ---------------------------------------------------------------- requests


def test_scalars_and_lists() -> None:
    req = request(
        timeout=12.5,
        temperature=0.7,
        top_p=0.9,
        n=2,
        stop="END",
        max_completion_tokens=100,
        max_tokens=50,
        presence_penalty=0.1,
        frequency_penalty=-0.2,
        logit_bias={50256: -100, "42": 5},
        user="u-1",
        seed=2**40,
        parallel_tool_calls=False,
        logprobs=True,
        top_logprobs=3,
        deployment_id="dep",
        api_version="2024-10-21",
        api_key="sk-test",
        reasoning_effort="low",
        modalities=["text", "audio"],
        service_tier="flex",
        store=True,
        caching=False,
        num_retries=3,
        mock_response="hello",
        drop_params=True,
        fallbacks=["openai/gpt-4o-mini", "anthropic/claude-x"],
        context_window_fallbacks=["openai/gpt-4.1"],
        content_policy_fallbacks=["anthropic/claude-y"],
        model_list=[{"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "rpm": 10}}],
    )
    assert req.model == "openai/gpt-4o"
    assert (req.timeout, req.temperature, req.top_p, req.n) == (12.5, 0.7, 0.9, 2)
    assert list(req.stop) == ["END"]
    assert (req.max_completion_tokens, req.max_tokens) == (100, 50)
    assert (req.presence_penalty, req.frequency_penalty) == (pytest.approx(0.1), pytest.approx(-0.2))
    assert dict(req.logit_bias) == {"50256": -100, "42": 5}
    assert (req.user, req.seed, req.parallel_tool_calls) == ("u-1", 2**40, False)
    assert (req.logprobs, req.top_logprobs, req.deployment_id) == (True, 3, "dep")
    assert (req.api_version, req.api_key, req.reasoning_effort) == ("2024-10-21", "sk-test", "low")
    assert list(req.modalities) == ["text", "audio"]
    assert (req.service_tier, req.store, req.caching) == ("flex", True, False)
    assert req.HasField("caching")
    assert (req.num_retries, req.mock_response, req.drop_params) == (3, "hello", True)
    assert list(req.fallbacks) == ["openai/gpt-4o-mini", "anthropic/claude-x"]
    assert list(req.context_window_fallbacks) == ["openai/gpt-4.1"]
    assert list(req.content_policy_fallbacks) == ["anthropic/claude-y"]
    assert not req.HasField("extra_body")  # model_list is its own field, not forwarded upstream
    assert [d.model_name for d in req.model_list] == ["gpt"]
    assert dict(req.model_list[0].litellm_params) == {"model": "openai/gpt-4o", "rpm": 10}


def test_unset_means_unset() -> None:
    req = request()
    for field in ("timeout", "temperature", "n", "seed", "caching", "drop_params", "api_base", "num_retries"):
        assert not req.HasField(field), field
    for field in ("response_format", "tool_choice", "thinking", "cache", "metadata", "extra_body"):
        assert not req.HasField(field), field
    assert list(req.stop) == []


def test_api_base_and_base_url_and_custom_provider() -> None:
    assert request(base_url="http://a").api_base == "http://a"
    assert request(api_base="http://b").api_base == "http://b"
    assert request(api_base="http://b", base_url="http://a").api_base == "http://b"
    assert request(model="gpt-4o", custom_llm_provider="azure").model == "azure/gpt-4o"
    assert request(model="azure/gpt-4o", custom_llm_provider="azure").model == "azure/gpt-4o"


def test_unknown_kwargs_go_to_extra_body_merged() -> None:
    req = request(
        top_k=40, safety_settings=[{"category": "x"}], extra_body={"top_k": 5, "repetition_penalty": 1.1}
    )
    assert struct_to_dict(req.extra_body) == {
        "top_k": 5,  # explicit extra_body wins over the loose kwarg
        "safety_settings": [{"category": "x"}],
        "repetition_penalty": 1.1,
    }


def test_tools_and_choices() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather by city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
                "strict": True,
            },
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    req = request(
        tools=tools, tool_choice="required", functions=[{"name": "legacy"}], function_call={"name": "legacy"}
    )
    tool = req.tools[0]
    assert (tool.type, tool.function.name, tool.function.description, tool.function.strict) == (
        "function",
        "get_weather",
        "Weather by city",
        True,
    )
    assert struct_to_dict(tool.function.parameters) == tools[0]["function"]["parameters"]  # type: ignore[index]
    assert (tool.cache_control.type, tool.cache_control.ttl) == ("ephemeral", "1h")
    assert req.tool_choice.mode == chat_pb2.TOOL_CHOICE_MODE_REQUIRED
    assert req.functions[0].name == "legacy"
    assert req.function_call.function.name == "legacy"
    for mode, value in (("auto", chat_pb2.TOOL_CHOICE_MODE_AUTO), ("none", chat_pb2.TOOL_CHOICE_MODE_NONE)):
        assert request(tool_choice=mode).tool_choice.mode == value
        assert request(function_call=mode).function_call.mode == value
    named = request(tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.tool_choice.WhichOneof("choice") == "function"
    assert named.tool_choice.function.name == "get_weather"


def test_response_format_dict_and_pydantic() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 10}}}
    rf = {
        "type": "json_schema",
        "json_schema": {"name": "N", "description": "d", "schema": schema, "strict": True},
    }
    req = request(response_format=rf)
    assert req.response_format.type == "json_schema"
    js = req.response_format.json_schema
    assert (js.name, js.description, js.strict) == ("N", "d", True)
    assert struct_to_dict(js.schema) == schema
    assert request(response_format={"type": "json_object"}).response_format.type == "json_object"

    class CalendarEvent(BaseModel):
        name: str
        participants: list[str]

    req = request(response_format=CalendarEvent)
    assert req.response_format.type == "json_schema"
    assert req.response_format.json_schema.name == "CalendarEvent"
    # As LiteLLM sends a pydantic class: OpenAI's strict schema, strict set.
    assert struct_to_dict(req.response_format.json_schema.schema) == {
        **CalendarEvent.model_json_schema(), "additionalProperties": False}
    assert req.response_format.json_schema.strict is True


def test_thinking_audio_prediction_cache_metadata_headers() -> None:
    req = request(
        thinking={"type": "enabled", "budget_tokens": 1024},
        audio={"voice": "alloy", "format": "wav"},
        prediction={
            "type": "content",
            "content": [{"type": "text", "text": "ab"}, {"type": "text", "text": "c"}],
        },
        cache={"no-cache": True, "no-store": False, "ttl": 60, "s-max-age": 30, "namespace": "tenant-a"},
        metadata={"trace_id": "t-1", "tags": ["a"], "n": 3},
        extra_headers={"X-Trace": "1"},
        stream_options={"include_usage": True},  # consumed by the client, not a request field
    )
    assert (req.thinking.type, req.thinking.budget_tokens) == ("enabled", 1024)
    assert (req.audio.voice, req.audio.format) == ("alloy", "wav")
    assert (req.prediction.type, req.prediction.content) == ("content", "abc")
    assert (req.cache.no_cache, req.cache.no_store, req.cache.ttl) == (True, False, 60)
    assert req.cache.HasField("no_store")
    assert (req.cache.s_maxage, req.cache.namespace) == (30, "tenant-a")
    assert request(cache={"s-maxage": 5}).cache.s_maxage == 5
    assert struct_to_dict(req.metadata) == {"trace_id": "t-1", "tags": ["a"], "n": 3}
    assert dict(req.extra_headers) == {"X-Trace": "1"}
    assert not req.HasField("extra_body")
    assert request(cache={}).HasField("cache")


def test_messages_all_keys() -> None:
    messages = [
        {"role": "system", "content": "be brief", "cache_control": {"type": "ephemeral"}},
        {
            "role": "user",
            "name": "ann",
            "content": [
                {"type": "text", "text": "look", "cache_control": {"type": "ephemeral", "ttl": "5m"}},
                {"type": "image_url", "image_url": "https://x/y.png"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,AA", "detail": "low", "format": "image/png"},
                },
                {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
                {"type": "file", "file": {"file_id": "file-1", "filename": "a.pdf"}},
            ],
            "unknown_key": "ignored",
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": {"city": "Paris"}},
                },
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            ],
            "function_call": {"name": "old", "arguments": "{}"},
            "reasoning_content": "thinking...",
            "thinking_blocks": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "redacted_thinking", "data": "enc"},
            ],
            "provider_specific_fields": {"thought_signatures": ["abc"]},
            "refusal": None,
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "22C"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
    ]
    req = request(messages=messages)
    system, user, assistant, tool, refusal = req.messages
    assert system.content == "be brief" and system.cache_control.type == "ephemeral"
    assert user.name == "ann" and not user.HasField("content")
    text, url, data_url, audio, file = user.content_parts
    assert (text.type, text.text, text.cache_control.ttl) == ("text", "look", "5m")
    assert url.image_url.url == "https://x/y.png" and not url.image_url.HasField("detail")
    assert (data_url.image_url.detail, data_url.image_url.format) == ("low", "image/png")
    assert (audio.input_audio.data, audio.input_audio.format) == ("UklG", "wav")
    assert (file.file.file_id, file.file.filename) == ("file-1", "a.pdf") and not file.file.HasField(
        "file_data"
    )
    assert not assistant.HasField("content") and not assistant.HasField("refusal")
    assert json.loads(assistant.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert [c.id for c in assistant.tool_calls] == ["call_1", "call_2"]
    assert assistant.function_call.name == "old"
    assert assistant.reasoning_content == "thinking..."
    assert assistant.thinking_blocks[0].signature == "sig"
    assert (assistant.thinking_blocks[1].type, assistant.thinking_blocks[1].data) == (
        "redacted_thinking",
        "enc",
    )
    assert struct_to_dict(assistant.provider_specific_fields) == {"thought_signatures": ["abc"]}
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "call_1", "22C")
    assert refusal.content_parts[0].refusal == "no"


def test_non_message_is_left_for_the_server() -> None:
    req = request(messages=["hello", USER])
    assert req.messages[0] == chat_pb2.Message()
    assert req.messages[1].content == "hi"


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"n": 1.5}, "n"),
        ({"seed": "x"}, "seed"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"metadata": {"a": object()}}, "metadata"),
        ({"extra_body": {"a": object()}}, "extra_body"),
        ({"stop": 3}, "stop"),
        ({"model": 3}, "model"),
        ({"messages": [{"role": "user", "content": 123}]}, "messages[0].content"),
        ({"messages": [USER, {"role": "assistant", "tool_calls": ["x"]}]}, "messages[1].tool_calls"),
        ({"timeout": "soon"}, "timeout"),
    ],
)
def test_unholdable_values_are_bad_requests(params: dict[str, Any], path: str) -> None:
    with pytest.raises(llmrpc.BadRequestError) as caught:
        request(**params)
    assert caught.value.param == path
    assert path in caught.value.message


# ---------------------------------------------------------------- responses


def full_response() -> completion_service_pb2.CompleteResponse:
    psf = {"citations": ["https://a"], "count": 2, "ratio": 0.5}
    message = chat_pb2.Message(
        role="assistant",
        content="It is sunny.",
        tool_calls=[
            chat_pb2.ToolCall(
                id="call_1",
                type="function",
                function=chat_pb2.FunctionCall(name="get_weather", arguments='{"city":"Paris"}'),
            )
        ],
        reasoning_content="Let me check.",
        thinking_blocks=[
            chat_pb2.ThinkingBlock(type="thinking", thinking="Let me check.", signature="sig=="),
            chat_pb2.ThinkingBlock(type="redacted_thinking", data="opaque"),
        ],
    )
    message.provider_specific_fields.update(psf)
    return completion_service_pb2.CompleteResponse(
        id="chatcmpl-123",
        object="chat.completion",
        created=1734366691,
        model="gpt-4o-2024-08-06",
        system_fingerprint="fp_1",
        choices=[
            chat_pb2.Choice(
                index=0, message=message, finish_reason="tool_calls", provider_finish_reason="end_turn"
            )
        ],
        usage=usage_pb2.Usage(
            prompt_tokens=13,
            completion_tokens=43,
            total_tokens=56,
            prompt_tokens_details=usage_pb2.PromptTokensDetails(cached_tokens=4, cache_write_tokens=2),
            completion_tokens_details=usage_pb2.CompletionTokensDetails(reasoning_tokens=7),
            cache_read_input_tokens=4,
            cache_creation_input_tokens=2,
        ),
        metadata=completion_service_pb2.ResponseMetadata(
            provider="openai",
            provider_model="gpt-4o",
            provider_request_id="req_9",
            attempts=2,
            upstream_latency_ms=321.5,
            cost_usd=0.0012,
            api_base="https://api.openai.com/v1",
            attempt_log=[
                completion_service_pb2.Attempt(
                    model="openai/gpt-4o",
                    provider="openai",
                    outcome="RATE_LIMITED",
                    upstream_http_status=429,
                    latency_ms=10,
                ),
                completion_service_pb2.Attempt(
                    model="openai/gpt-4o", provider="openai", outcome="ok", latency_ms=321.5
                ),
            ],
        ),
    )


def test_response_fields() -> None:
    resp = response_from_proto(full_response())
    assert (resp.id, resp.created, resp.model, resp.object) == (
        "chatcmpl-123",
        1734366691,
        "gpt-4o-2024-08-06",
        "chat.completion",
    )
    assert resp.system_fingerprint == "fp_1"
    choice = resp.choices[0]
    assert (choice.finish_reason, choice.index) == ("tool_calls", 0)
    assert choice.provider_specific_fields == {"provider_finish_reason": "end_turn"}
    msg = choice.message
    assert (msg.content, msg.role, msg.function_call, msg.refusal) == (
        "It is sunny.",
        "assistant",
        None,
        None,
    )
    assert msg.tool_calls is not None and msg.tool_calls[0].function.name == "get_weather"
    assert msg.tool_calls[0].function.arguments == '{"city":"Paris"}'
    assert msg.reasoning_content == "Let me check."
    assert msg.thinking_blocks == [
        {"type": "thinking", "thinking": "Let me check.", "signature": "sig=="},
        {"type": "redacted_thinking", "data": "opaque"},
    ]
    psf = msg.provider_specific_fields
    assert psf == {"citations": ["https://a"], "count": 2, "ratio": 0.5}
    assert psf is not None and type(psf["count"]) is int
    usage = resp.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (13, 43, 56)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 4
    assert usage.prompt_tokens_details.cache_creation_tokens == 2
    assert usage.prompt_tokens_details.audio_tokens is None
    assert (
        usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens == 7
    )
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (4, 2)


def test_hidden_params() -> None:
    hidden = response_from_proto(full_response())._hidden_params
    assert hidden["custom_llm_provider"] == "openai"
    assert hidden["model_id"] is None
    assert hidden["api_base"] == "https://api.openai.com/v1"
    assert (hidden["provider_model"], hidden["provider_request_id"]) == ("gpt-4o", "req_9")
    assert (hidden["cache_hit"], hidden["attempts"], hidden["upstream_latency_ms"]) == (False, 2, 321.5)
    assert hidden["response_cost"] == pytest.approx(0.0012)
    assert hidden["attempt_log"][0] == {
        "model": "openai/gpt-4o",
        "provider": "openai",
        "outcome": "RATE_LIMITED",
        "upstream_http_status": 429,
        "latency_ms": 10,
        "deployment": None,
    }
    assert hidden["attempt_log"][1]["upstream_http_status"] is None
    bare = response_from_proto(completion_service_pb2.CompleteResponse(id="x"))._hidden_params
    assert bare["response_cost"] is None and bare["custom_llm_provider"] is None


def test_minimal_response_defaults() -> None:
    pb = completion_service_pb2.CompleteResponse(
        id="x",
        object="chat.completion",
        created=1,
        model="m",
        choices=[
            chat_pb2.Choice(message=chat_pb2.Message(role="assistant", content="hi"), finish_reason="stop")
        ],
    )
    resp = response_from_proto(pb)
    msg = resp.choices[0].message
    dumped = resp.model_dump()
    assert dumped["choices"][0]["message"] == {
        "content": "hi",
        "role": "assistant",
        "tool_calls": None,
        "function_call": None,
        "reasoning_content": None,
        "thinking_blocks": None,
        "provider_specific_fields": None,
        "refusal": None,
    }
    assert "logprobs" not in dumped["choices"][0] and "logprobs" not in resp.choices[0]
    assert resp.choices[0].logprobs is None
    assert "service_tier" not in dumped and "annotations" not in msg
    assert dumped["usage"] == {
        "completion_tokens": 0,
        "prompt_tokens": 0,
        "total_tokens": 0,
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    assert resp.system_fingerprint is None


def test_logprobs_annotations_service_tier_only_when_set() -> None:
    pb = full_response()
    pb.service_tier = "default"
    choice = pb.choices[0]
    choice.logprobs.content.add(token="It", logprob=-0.1, bytes=[73, 116]).top_logprobs.add(
        token="It", logprob=-0.1
    )
    choice.message.annotations.add(
        type="url_citation",
        url_citation=chat_pb2.UrlCitation(start_index=0, end_index=2, title="T", url="https://t"),
    )
    resp = response_from_proto(pb)
    assert resp.service_tier == "default" and "service_tier" in resp
    lp = resp.choices[0].logprobs
    assert lp is not None and lp["content"][0]["bytes"] == [73, 116] and lp["refusal"] is None
    assert resp.choices[0].message.annotations == [
        {
            "type": "url_citation",
            "url_citation": {"start_index": 0, "end_index": 2, "title": "T", "url": "https://t"},
        }
    ]
    ChatCompletion.model_validate(resp.model_dump())


def test_openai_validates_dumps() -> None:
    text = completion_service_pb2.CompleteResponse(
        id="chatcmpl-1",
        object="chat.completion",
        created=1,
        model="gpt-4o",
        choices=[
            chat_pb2.Choice(message=chat_pb2.Message(role="assistant", content="hello"), finish_reason="stop")
        ],
        usage=usage_pb2.Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
    )
    for pb in (text, full_response()):
        resp = response_from_proto(pb)
        parsed = ChatCompletion.model_validate(resp.model_dump())
        assert parsed.choices[0].message.content == resp.choices[0].message.content
        ChatCompletion.model_validate(resp.json())
        ChatCompletion.model_validate_json(resp.to_json())
    tool_call = ChatCompletion.model_validate(response_from_proto(full_response()).model_dump())
    assert tool_call.choices[0].message.tool_calls[0].function.name == "get_weather"  # type: ignore[index,union-attr]


def test_dict_access_json_and_repr() -> None:
    resp = response_from_proto(full_response())
    assert resp["choices"][0]["message"]["content"] == "It is sunny."
    assert resp.get("model") == "gpt-4o-2024-08-06" and resp.get("nope", 7) == 7
    assert "usage" in resp and "nope" not in resp
    with pytest.raises(KeyError):
        resp["nope"]
    resp["custom"] = 1
    assert resp.custom == 1
    assert resp.json()["id"] == "chatcmpl-123"  # a dict, as LiteLLM's
    assert json.loads(resp.to_json())["id"] == "chatcmpl-123"
    shown = str(resp)
    assert (
        shown.startswith("ModelResponse(id='chatcmpl-123'") and "Choices(finish_reason='tool_calls'" in shown
    )
    assert "logprobs" not in repr(resp.choices[0])


def test_response_message_round_trips_as_next_turn() -> None:
    original = full_response().choices[0].message
    resp = response_from_proto(full_response())
    req = request(
        messages=[USER, resp.choices[0].message, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]
    )
    assert req.messages[1] == original


def test_openai_message_object_is_accepted() -> None:
    msg = ChatCompletionMessage(role="assistant", content="hi")
    req = request(messages=[USER, msg])
    assert (req.messages[1].role, req.messages[1].content) == ("assistant", "hi")


def test_proto_json_agrees_on_request(gateway: FakeGateway) -> None:
    # Cross-check the hand-written converter against protobuf's own JSON mapping.
    req = request(temperature=0.5, tools=[{"type": "function", "function": {"name": "f"}}], top_k=3)
    as_json = json_format.MessageToDict(req)
    assert as_json["temperature"] == 0.5 and as_json["tools"][0]["function"]["name"] == "f"
    assert as_json["extraBody"] == {"top_k": 3.0}


# ---------------------------------------------------------------- through a gateway


def test_completion_end_to_end(gateway: FakeGateway, target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRPC_SERVER", target)
    resp = llmrpc.completion(model="openai/gpt-4o", messages=[USER], temperature=0.2, top_k=40, timeout=20)
    assert isinstance(resp, llmrpc.ModelResponse)
    assert resp.choices[0].message.content == "It is sunny."
    assert resp._response_ms is not None and resp._response_ms > 0
    assert resp._hidden_params["custom_llm_provider"] == "openai"
    sent = gateway.requests[0]
    assert sent.temperature == 0.2 and sent.timeout == 20 and struct_to_dict(sent.extra_body) == {"top_k": 40}
    remaining = gateway.time_remaining[0]
    assert remaining is not None and 20 < remaining <= 25  # deadline = timeout + 5 s


def test_no_timeout_no_deadline(gateway: FakeGateway, target: str) -> None:
    with llmrpc.Client(target) as client:
        client.completion("openai/gpt-4o", [USER])
    remaining = gateway.time_remaining[0]
    assert remaining is None or remaining > 10**6


def test_default_client_is_shared_per_target(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRPC_SERVER", target)
    first = _client._client_for({})
    assert _client._client_for({}) is first and first.target == target
    monkeypatch.delenv("LLMRPC_SERVER")
    assert _client._client_for({}).target == "localhost:50051"
    assert llmrpc.Client().target == "localhost:50051"


def test_explicit_client_and_metadata(gateway: FakeGateway, target: str) -> None:
    with llmrpc.Client(target, metadata=[("authorization", "Bearer t")]) as client:
        resp = llmrpc.completion("openai/gpt-4o", [USER], client=client)
        assert isinstance(resp, llmrpc.ModelResponse)
        assert llmrpc.get_supported_openai_params("gpt-4o", "openai", client=client) == [
            "temperature",
            "tools",
        ]
    assert gateway.metadata[0]["authorization"] == "Bearer t"
    assert gateway.requests[1].model == "openai/gpt-4o"
    with pytest.raises(TypeError):
        llmrpc.completion("openai/gpt-4o", [USER], client=object())
    with pytest.raises(RuntimeError):
        client.completion("openai/gpt-4o", [USER])


async def test_acompletion(gateway: FakeGateway, target: str) -> None:
    async with llmrpc.Client(target) as client:
        resp = await llmrpc.acompletion("openai/gpt-4o", [USER], client=client, timeout=30)
        again = await client.acompletion("openai/gpt-4o", [USER])
    assert isinstance(resp, llmrpc.ModelResponse) and isinstance(again, llmrpc.ModelResponse)
    assert resp.choices[0].message.tool_calls is not None
    assert resp._hidden_params["attempts"] == 2
    remaining = gateway.time_remaining[0]
    assert remaining is not None and 30 < remaining <= 35


def test_signature_mirrors_litellm() -> None:
    litellm_params = [
        "model", "messages", "timeout", "temperature", "top_p", "n", "stream", "stream_options", "stop",
        "max_completion_tokens", "max_tokens", "presence_penalty", "frequency_penalty", "logit_bias", "user",
        "response_format", "seed", "tools", "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs",
        "deployment_id", "functions", "function_call", "base_url", "api_version", "api_key", "model_list",
        "kwargs",
    ]  # fmt: skip
    assert list(inspect.signature(llmrpc.completion).parameters) == litellm_params
    assert inspect.iscoroutinefunction(llmrpc.acompletion)


@pytest.mark.parametrize("copy", [llmrpc.acompletion, llmrpc.Client.completion, llmrpc.Client.acompletion],
                         ids=["acompletion", "Client.completion", "Client.acompletion"])
def test_completion_signatures_are_one(copy: Callable[..., Any]) -> None:
    # Four hand-written copies of one ~30-parameter signature: each must equal the module completion()
    # parameter by parameter (name, order, kind, default, annotation), so one cannot drift alone.
    source = list(inspect.signature(llmrpc.completion).parameters.values())
    params = list(inspect.signature(copy).parameters.values())
    if params[0].name == "self":
        params = params[1:]
    assert [p.name for p in params] == [p.name for p in source]
    for got, expected in zip(params, source, strict=True):
        assert (got.kind, got.default, got.annotation) == (expected.kind, expected.default, expected.annotation), (
            got.name)
