"""The ``gemini/`` provider (Google AI Studio Gemini API) through the real gateway and the thin client,
against the fake Gemini upstream; pure checks of the schema cleaner and the adapter at the end."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import llmrpc
import pytest
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc_server.providers import _gemini_stream as wire
from llmrpc_server.providers._gemini_schema import clean_schema
from llmrpc_server.providers.base import ErrorKind, ProviderError, StreamEvent, StreamState
from llmrpc_server.providers.gemini import GeminiAdapter, adapters, media_part

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream, JSONReply, RawReply, SSEReply, dumps
from tests.upstreams import gemini as fg

MODEL = "gemini/gemini-2.5-flash"
KEY = "g-test-key"
USER = [{"role": "user", "content": "Hi"}]
SIG = "c2lnbmF0dXJlLW9uZQ=="
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
StartGateway = Callable[..., GatewayThread]


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=fg.default_handler) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream) -> Iterator[GatewayThread]:
    with GatewayThread(gateway_settings({"GEMINI_API_KEY": KEY, "GEMINI_API_BASE": upstream.url})) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway: GatewayThread) -> Iterator[llmrpc.Client]:
    with llmrpc.Client(gateway.address) as c:
        yield c


@pytest.fixture(autouse=True)
def _fresh(upstream: FakeUpstream) -> Iterator[None]:
    upstream.reset()
    yield
    assert upstream.pending == 0, "a scripted reply was not consumed"


@pytest.fixture
def call(client: llmrpc.Client) -> Callable[..., Any]:
    def run(messages: list[Any] | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("model", MODEL)
        return llmrpc.completion(messages=messages or USER, client=client, **kwargs)

    return run


def sent(upstream: FakeUpstream, n: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = upstream.requests[n].json()
    return body


def collect(stream: Any) -> list[Any]:
    return list(stream)


def sse(*bodies: dict[str, Any]) -> SSEReply:
    return SSEReply(["data: " + dumps(b) for b in bodies])


def candidate(parts: list[dict[str, Any]], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": index}
    if finish:
        out["finishReason"] = finish
    return out


# ---- plain text and the request on the wire ----------------------------------------------------


def test_plain_text_and_what_the_upstream_received(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    resp = call(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use metric."},
            {"role": "user", "content": "Hi"},
        ],
        extra_headers={"x-trace": "t1"},
    )
    choice = resp.choices[0]
    assert choice.message.content == "echo: Hi"
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert choice.provider_specific_fields == {"provider_finish_reason": "STOP"}
    assert resp.id == "resp-1"
    assert resp.model == "gemini-2.5-flash"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (5, 7, 12)
    assert resp._hidden_params["custom_llm_provider"] == "gemini"
    req = upstream.requests[-1]
    assert req.method == "POST"
    assert req.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert req.query == {}
    assert req.headers["x-goog-api-key"] == KEY
    assert req.headers["content-type"] == "application/json"
    assert req.headers["x-trace"] == "t1"
    assert "authorization" not in req.headers
    assert req.json() == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use metric."}]},
    }


def test_consecutive_same_role_turns_are_merged(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    call(
        [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": "three"}]},
            {"role": "assistant", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "assistant", "content": None},
            {"role": "system", "content": "late system"},
            {"role": "user", "content": "four"},
        ]
    )
    body = sent(upstream)
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}, {"text": "three"}]},
        {"role": "model", "parts": [{"text": "a"}, {"text": "b"}]},
        {"role": "user", "parts": [{"text": "four"}]},
    ]
    assert body["systemInstruction"] == {"parts": [{"text": "late system"}]}


def test_generation_config(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    call(
        temperature=0.2,
        top_p=0.9,
        max_tokens=50,
        max_completion_tokens=100,
        stop="END",
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logprobs=True,
        top_logprobs=3,
        modalities=["text"],
    )
    assert sent(upstream)["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "maxOutputTokens": 100,
        "stopSequences": ["END"],
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "responseLogprobs": True,
        "logprobs": 3,
        "responseModalities": ["TEXT"],
    }
    call(max_tokens=64, stop=["a", "b"])
    assert sent(upstream)["generationConfig"] == {"maxOutputTokens": 64, "stopSequences": ["a", "b"]}


def test_extra_body_keys_go_where_gemini_wants_them(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    safety = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
    call(
        tools=[WEATHER],
        top_k=40,
        safety_settings=safety,
        cached_content="cachedContents/abc",
        extra_body={
            "tools": [{"googleSearch": {}}],
            "labels": {"team": "x"},
            "generationConfig": {"topK": 41, "seed": 1},
        },
    )
    body = sent(upstream)
    assert body["generationConfig"] == {"topK": 40, "seed": 1}  # a single key wins over a whole config
    assert body["safetySettings"] == safety
    assert body["cachedContent"] == "cachedContents/abc"
    assert body["labels"] == {"team": "x"}
    assert body["tools"][1:] == [{"googleSearch": {}}]
    assert body["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    call(extra_body={"topK": 3, "safetySettings": safety})
    assert sent(upstream)["generationConfig"] == {"topK": 3}
    assert sent(upstream)["safetySettings"] == safety


def test_supported_params_and_unsupported_rejected(
    call: Callable[..., Any], client: llmrpc.Client, upstream: FakeUpstream
) -> None:
    params = llmrpc.get_supported_openai_params(model=MODEL, client=client)
    assert params is not None
    assert set(params) >= {"reasoning_effort", "thinking", "tools", "response_format", "top_logprobs", "n"}
    assert "logit_bias" not in params and "user" not in params
    with pytest.raises(llmrpc.UnsupportedParamsError):
        call(logit_bias={"1": 2})
    assert upstream.requests == []
    call(logit_bias={"1": 2}, user="u1", drop_params=True, parallel_tool_calls=False)
    assert "logit_bias" not in json.dumps(sent(upstream))


# ---- multimodal ----------------------------------------------------------------------------------


def test_images_audio_and_files_become_inline_or_file_data(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    call(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?x=1"}},
                    {"type": "image_url", "image_url": {"url": "gs://bucket/doc.pdf"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/img", "format": "image/webp"},
                    },
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}},
                    {
                        "type": "file",
                        "file": {
                            "file_id": "https://generativelanguage.googleapis.com/v1beta/files/f1",
                            "format": "video/mp4",
                        },
                    },
                ],
            },
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}],
            },
        ]
    )
    parts = sent(upstream)["contents"][0]["parts"]
    assert parts == [
        {"text": "Look"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}},
        {"fileData": {"fileUri": "https://example.com/cat.JPG?x=1", "mimeType": "image/jpeg"}},
        {"fileData": {"fileUri": "gs://bucket/doc.pdf", "mimeType": "application/pdf"}},
        {"fileData": {"fileUri": "https://example.com/img", "mimeType": "image/webp"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
        {
            "fileData": {
                "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/f1",
                "mimeType": "video/mp4",
            }
        },
        # the image-only second user message: merged, with LiteLLM's blank text part
        {"fileData": {"fileUri": "https://x.test/a.png", "mimeType": "image/png"}},
        {"text": " "},
    ]


def test_media_part_unknown_extension_has_no_mime() -> None:
    assert media_part("https://example.com/blob", None) == {
        "fileData": {"fileUri": "https://example.com/blob"}
    }


# ---- tools and schemas ---------------------------------------------------------------------------


def test_tool_schema_is_cleaned_on_the_wire(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "$defs": {
            "Unit": {"type": "string", "enum": ["c", "f"], "title": "Unit"},
            "Place": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "near": {"$ref": "#/$defs/Place"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
        "properties": {
            "place": {"$ref": "#/$defs/Place", "description": "where"},
            "unit": {"anyOf": [{"$ref": "#/$defs/Unit"}, {"type": "null"}], "default": None},
            "days": {"type": ["integer", "null"], "minimum": 1, "format": "int32"},
            "note": {"type": "string", "format": "uri", "maxLength": 20},
        },
        "required": ["place", "days"],
    }
    tools = [
        {"type": "function", "function": {"name": "forecast", "parameters": schema, "strict": True}},
        {
            "type": "function",
            "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
        },
        {"type": "function", "function": {"name": "ping", "description": "no args"}},
    ]
    call(tools=tools)
    body = sent(upstream)
    assert len(body["tools"]) == 1
    forecast, get_time, ping = body["tools"][0]["functionDeclarations"]
    assert forecast == {
        "name": "forecast",
        "parameters": {
            "type": "object",
            "properties": {
                "place": {
                    "type": "object",
                    "description": "where",
                    "properties": {"city": {"type": "string"}, "near": {"type": "object"}},
                    "required": ["city"],
                },
                "unit": {"type": "string", "enum": ["c", "f"], "title": "Unit", "nullable": True},
                "days": {"type": "integer", "nullable": True, "minimum": 1, "format": "int32"},
                "note": {"type": "string", "maxLength": 20},
            },
            "required": ["place", "days"],
        },
    }
    text = json.dumps(body)
    for banned in ("$ref", "$defs", "additionalProperties", "$schema", "strict"):
        assert banned not in text
    assert get_time == {"name": "get_time"}
    assert ping == {"name": "ping", "description": "no args"}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
def test_tool_choice(call: Callable[..., Any], upstream: FakeUpstream, choice: Any, expected: Any) -> None:
    call(tools=[WEATHER], tool_choice=choice)
    assert sent(upstream)["toolConfig"] == {"functionCallingConfig": expected}


def test_two_turn_tool_loop_echoes_the_thought_signature(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        fg.generate_content(
            None, thoughts=["I need the weather."], function_calls=[("get_weather", {"city": "Oslo"}, SIG)]
        )
    )
    messages: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = call(messages, tools=[WEATHER], reasoning_effort="low")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.provider_specific_fields == {"provider_finish_reason": "STOP"}
    msg = choice.message
    assert msg.content is None
    assert msg.reasoning_content == "I need the weather."
    assert msg.thinking_blocks == [{"type": "thinking", "thinking": "I need the weather.", "signature": None}]
    assert msg.provider_specific_fields == {"thought_signatures": [SIG]}
    [tool_call] = msg.tool_calls
    assert tool_call.id.startswith("call_") and len(tool_call.id) > 10
    assert tool_call.type == "function"
    assert tool_call.function.name == "get_weather"
    assert json.loads(tool_call.function.arguments) == {"city": "Oslo"}
    assert tool_call.provider_specific_fields == {"thought_signature": SIG}
    assert first.usage.completion_tokens_details.reasoning_tokens == 4

    messages += [msg, {"role": "tool", "tool_call_id": tool_call.id, "content": "7C rain"}]
    upstream.enqueue(fg.generate_content("7°C and rain."))
    second = call(messages, tools=[WEATHER], reasoning_effort="low")
    assert second.choices[0].message.content == "7°C and rain."
    body = sent(upstream)
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Oslo?"}]},
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": SIG}
            ],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "7C rain"}}}],
        },
    ]
    assert body["generationConfig"] == {"thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True}}


def test_two_turn_tool_loop_streamed(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(
        fg.stream_generate_content(
            ["Let me check."],
            thoughts=["Think", "ing."],
            function_calls=[("get_weather", {"city": "Oslo"}, SIG)],
        )
    )
    messages: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    chunks = collect(call(messages, tools=[WEATHER], reasoning_effort="medium", stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert [d.reasoning_content for d in deltas if d.reasoning_content] == ["Think", "ing."]
    call_deltas = [t for d in deltas for t in d.tool_calls or ()]
    assert call_deltas[0].index == 0 and call_deltas[0].id.startswith("call_")
    assert call_deltas[0].function.name == "get_weather" and call_deltas[0].function.arguments == ""
    assert call_deltas[1].index == 0 and call_deltas[1].id is None
    assert json.loads(call_deltas[1].function.arguments) == {"city": "Oslo"}
    built = llmrpc.stream_chunk_builder(chunks)
    assert built.choices[0].finish_reason == "tool_calls"
    msg = built.choices[0].message
    assert msg.content == "Let me check."
    assert msg.reasoning_content == "Thinking."
    assert msg.tool_calls[0].provider_specific_fields == {"thought_signature": SIG}
    messages += [msg, {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "7C"}]
    call(messages, tools=[WEATHER])
    model_turn = sent(upstream)["contents"][1]
    assert model_turn == {
        "role": "model",
        "parts": [
            {"text": "Let me check."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": SIG},
        ],
    }
    assert sent(upstream)["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_weather"


def test_parallel_calls_get_distinct_ids_and_results_share_one_turn(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        fg.generate_content(
            None,
            function_calls=[("get_weather", {"city": "Oslo"}, SIG), ("get_weather", {"city": "Rome"}, None)],
        )
    )
    messages: list[Any] = [{"role": "user", "content": "Oslo and Rome?"}]
    msg = call(messages, tools=[WEATHER]).choices[0].message
    a, b = msg.tool_calls
    assert a.id != b.id
    assert a.provider_specific_fields == {"thought_signature": SIG} and b.provider_specific_fields is None
    messages += [
        msg,
        {"role": "tool", "tool_call_id": b.id, "content": "20C"},
        {"role": "tool", "tool_call_id": a.id, "content": "7C"},
        {"role": "user", "content": "Thanks"},
    ]
    call(messages, tools=[WEATHER])
    contents = sent(upstream)["contents"]
    assert contents[1]["parts"][1] == {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}
    assert contents[2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"content": "20C"}}},
            {"functionResponse": {"name": "get_weather", "response": {"content": "7C"}}},
            {"text": "Thanks"},
        ],
    }


def test_history_signatures_from_litellm_ids_thinking_blocks_and_gemini_3(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    history: list[Any] = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "Checking.",
            "thinking_blocks": [
                {"type": "thinking", "thinking": "plan", "signature": "c2lnLXRob3VnaHQ="},
                {"type": "thinking", "thinking": "unsigned summary"},
                {"type": "thinking", "thinking": "", "signature": "c2lnLXRleHQ="},
                {"type": "redacted_thinking", "data": "xx"},
            ],
            "tool_calls": [
                {
                    "id": "call_ab12__thought__c2lnLWxpdGVsbG0=",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_ab12__thought__c2lnLWxpdGVsbG0=", "content": "ok"},
    ]
    call(history, tools=[WEATHER])
    assert sent(upstream)["contents"][1]["parts"] == [
        {"text": "plan", "thought": True, "thoughtSignature": "c2lnLXRob3VnaHQ="},
        {"text": "Checking.", "thoughtSignature": "c2lnLXRleHQ="},
        {"functionCall": {"name": "get_weather", "args": {}}, "thoughtSignature": "c2lnLWxpdGVsbG0="},
    ]
    # A history without signatures (e.g. from another provider) on Gemini 3: Google's placeholder.
    plain: list[Any] = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "a"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "b"},
    ]
    call(plain, tools=[WEATHER], model="gemini/gemini-3-pro-preview")
    parts = sent(upstream)["contents"][1]["parts"]
    assert parts[0]["thoughtSignature"] == "skip_thought_signature_validator"
    assert "thoughtSignature" not in parts[1]
    call(plain, tools=[WEATHER])  # Gemini 2.5: sent as is
    assert "thoughtSignature" not in json.dumps(sent(upstream))


def test_legacy_function_messages(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    call(
        [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "lookup", "arguments": '{"q": 1}'},
            },
            {"role": "function", "name": "lookup", "content": "found"},
        ]
    )
    contents = sent(upstream)["contents"]
    assert contents[1]["parts"] == [{"functionCall": {"name": "lookup", "args": {"q": 1}}}]
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "lookup", "response": {"content": "found"}}}
    ]


def test_invalid_tool_arguments_in_history_is_a_bad_request(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    history = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "[1, 2]"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "x"},
    ]
    with pytest.raises(llmrpc.BadRequestError, match="must be a JSON object"):
        call(history, tools=[WEATHER])
    assert upstream.requests == []


# ---- structured output and reasoning -------------------------------------------------------------


def test_response_format(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    call(response_format={"type": "json_object"})
    assert sent(upstream)["generationConfig"] == {"responseMimeType": "application/json"}
    schema = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/A"}},
        "$defs": {"A": {"type": "integer"}},
        "additionalProperties": False,
    }
    call(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": schema, "strict": True},
        }
    )
    assert sent(upstream)["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,  # full JSON Schema is accepted there; strict dropped
    }
    call(response_format={"type": "text"})
    assert "generationConfig" not in sent(upstream)


@pytest.mark.parametrize(
    ("effort", "expected"),
    [
        ("minimal", {"thinkingBudget": 128, "includeThoughts": True}),
        ("low", {"thinkingBudget": 1024, "includeThoughts": True}),
        ("medium", {"thinkingBudget": 2048, "includeThoughts": True}),
        ("high", {"thinkingBudget": 4096, "includeThoughts": True}),
        ("none", {"thinkingBudget": 0, "includeThoughts": False}),
        ("disable", {"thinkingBudget": 0, "includeThoughts": False}),
    ],
)
def test_reasoning_effort_budgets(
    call: Callable[..., Any], upstream: FakeUpstream, effort: str, expected: dict[str, Any]
) -> None:
    call(reasoning_effort=effort)
    assert sent(upstream)["generationConfig"] == {"thinkingConfig": expected}


@pytest.mark.parametrize(
    ("model", "effort", "expected"),
    [
        ("gemini-3-pro-preview", "low", {"thinkingLevel": "low", "includeThoughts": True}),
        ("gemini-3-pro-preview", "medium", {"thinkingLevel": "high", "includeThoughts": True}),
        ("gemini-3-flash-preview", "medium", {"thinkingLevel": "medium", "includeThoughts": True}),
        ("gemini-3-flash-preview", "minimal", {"thinkingLevel": "minimal", "includeThoughts": True}),
        ("gemini-3-pro-preview", "none", {"thinkingLevel": "low", "includeThoughts": False}),
        ("gemini-2.5-flash-lite", "minimal", {"thinkingBudget": 512, "includeThoughts": True}),
    ],
)
def test_reasoning_effort_model_specific(
    call: Callable[..., Any], upstream: FakeUpstream, model: str, effort: str, expected: dict[str, Any]
) -> None:
    call(model=f"gemini/{model}", reasoning_effort=effort)
    assert upstream.requests[-1].path == f"/v1beta/models/{model}:generateContent"
    assert sent(upstream)["generationConfig"] == {"thinkingConfig": expected}


@pytest.mark.parametrize(
    ("thinking", "expected"),
    [
        ({"type": "enabled", "budget_tokens": 3000}, {"includeThoughts": True, "thinkingBudget": 3000}),
        ({"type": "enabled", "budget_tokens": 0}, {"includeThoughts": False, "thinkingBudget": 0}),
        ({"type": "enabled"}, {"includeThoughts": True}),
        ({"type": "disabled"}, {"thinkingBudget": 0, "includeThoughts": False}),
        ({"type": "adaptive"}, {"includeThoughts": True, "thinkingBudget": -1}),
    ],
)
def test_thinking_param_wins_over_effort(
    call: Callable[..., Any], upstream: FakeUpstream, thinking: dict[str, Any], expected: dict[str, Any]
) -> None:
    call(thinking=thinking, reasoning_effort="high")
    assert sent(upstream)["generationConfig"] == {"thinkingConfig": expected}


def test_signature_on_a_text_part_signs_the_thinking_and_round_trips(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        JSONReply(
            200,
            {
                "candidates": [
                    candidate(
                        [{"text": "hmm", "thought": True}, {"text": "Answer.", "thoughtSignature": SIG}],
                        "STOP",
                    )
                ],
                "usageMetadata": fg.default_usage(thoughts=3),
            },
        )
    )
    msg = call(reasoning_effort="low").choices[0].message
    assert msg.content == "Answer."
    assert msg.thinking_blocks == [{"type": "thinking", "thinking": "hmm", "signature": SIG}]
    call([*USER, msg, {"role": "user", "content": "more"}])
    assert sent(upstream)["contents"][1]["parts"] == [
        {"text": "hmm", "thought": True, "thoughtSignature": SIG},
        {"text": "Answer."},
    ]


# ---- usage ---------------------------------------------------------------------------------------


def test_usage_with_cache_thoughts_and_tool_use_tokens(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    usage = {
        "promptTokenCount": 1000,
        "cachedContentTokenCount": 800,
        "candidatesTokenCount": 20,
        "thoughtsTokenCount": 30,
        "toolUsePromptTokenCount": 5,
        "totalTokenCount": 1055,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 900},
            {"modality": "IMAGE", "tokenCount": 100},
        ],
    }
    upstream.enqueue(fg.generate_content("ok", usage=usage))
    resp = call()
    u = resp.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (1005, 50, 1055)
    assert u.prompt_tokens_details.cached_tokens == 800
    assert u.cache_read_input_tokens == 800
    assert u.prompt_tokens_details.text_tokens == 900 and u.prompt_tokens_details.image_tokens == 100
    assert u.completion_tokens_details.reasoning_tokens == 30


def test_streaming_with_usage_counts_thoughts(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(
        fg.stream_generate_content(
            ["Hel", "lo"], thoughts=["pondering"], usage=fg.default_usage(prompt=9, candidates=2, thoughts=6)
        )
    )
    chunks = collect(call(stream=True, stream_options={"include_usage": True}, reasoning_effort="low"))
    assert all(c.id == "resp-1" for c in chunks)
    with_choices = [c for c in chunks if c.usage is None]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in with_choices[1:])
    assert with_choices[0].choices[0].delta.reasoning_content == "pondering"
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == "Hello"
    assert with_choices[-1].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert len(last.choices) == 1 and last.choices[0].finish_reason is None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (9, 8, 17)
    assert last.usage.completion_tokens_details.reasoning_tokens == 6
    assert upstream.requests[-1].path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert upstream.requests[-1].query == {"alt": "sse"}
    assert upstream.requests[-1].headers["x-goog-api-key"] == KEY


def test_streaming_without_usage_sends_no_usage_chunk(call: Callable[..., Any]) -> None:
    chunks = collect(call(stream=True))
    assert all(c.choices for c in chunks)
    assert all(getattr(c, "usage", None) is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: Hi"


# ---- finish reasons and safety -------------------------------------------------------------------

_FINISH_CASES = [
    ("STOP", "stop", True),
    ("MAX_TOKENS", "length", True),
    ("SAFETY", "content_filter", False),
    ("RECITATION", "content_filter", False),
    ("LANGUAGE", "content_filter", True),
    ("OTHER", "content_filter", True),
    ("BLOCKLIST", "content_filter", False),
    ("PROHIBITED_CONTENT", "content_filter", False),
    ("SPII", "content_filter", False),
    ("IMAGE_SAFETY", "content_filter", False),
    ("IMAGE_PROHIBITED_CONTENT", "content_filter", False),
    ("IMAGE_RECITATION", "content_filter", True),
    ("IMAGE_OTHER", "content_filter", True),
    ("NO_IMAGE", "content_filter", True),
    ("MALFORMED_FUNCTION_CALL", "stop", True),
    ("UNEXPECTED_TOOL_CALL", "stop", True),
    ("TOO_MANY_TOOL_CALLS", "stop", True),
    ("FINISH_REASON_UNSPECIFIED", "stop", True),
]


@pytest.mark.parametrize(("raw", "expected", "content_kept"), _FINISH_CASES)
def test_finish_reasons(
    call: Callable[..., Any], upstream: FakeUpstream, raw: str, expected: str, content_kept: bool
) -> None:
    upstream.enqueue(
        fg.generate_content("partial", finish_reason=raw),
        fg.stream_generate_content(["x"], finish_reason=raw),
    )
    choice = call().choices[0]
    assert choice.finish_reason == expected
    assert choice.provider_specific_fields == {"provider_finish_reason": raw}
    assert choice.message.content == ("partial" if content_kept else None)
    final = [c.choices[0] for c in call(stream=True) if c.choices and c.choices[0].finish_reason]
    assert [(c.finish_reason, c.provider_specific_fields) for c in final] == [
        (expected, {"provider_finish_reason": raw})
    ]


def test_prompt_blocked_for_safety(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(fg.generate_content(prompt_blocked="SAFETY"))
    choice = call().choices[0]
    assert choice.message.content is None
    assert choice.finish_reason == "content_filter"
    assert choice.provider_specific_fields == {"provider_finish_reason": "SAFETY"}
    blocked = fg.generate_content(prompt_blocked="PROHIBITED_CONTENT").body
    assert isinstance(blocked, dict)
    upstream.enqueue(sse(blocked))
    chunks = collect(call(stream=True, stream_options={"include_usage": True}))
    assert len(chunks) == 2
    only = chunks[0].choices[0]
    assert (only.finish_reason, only.delta.content) == ("content_filter", None)
    assert only.provider_specific_fields == {"provider_finish_reason": "PROHIBITED_CONTENT"}
    assert chunks[1].usage.prompt_tokens == 5 and chunks[1].usage.completion_tokens == 0


def test_several_candidates(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    body = {
        "candidates": [
            candidate([{"text": "one"}], "STOP", 0),
            candidate([{"text": "two"}], "MAX_TOKENS", 1),
        ],
        "usageMetadata": fg.default_usage(),
    }
    upstream.enqueue(JSONReply(200, body))
    resp = call(n=2)
    assert sent(upstream)["generationConfig"] == {"candidateCount": 2}
    assert [(c.index, c.message.content, c.finish_reason) for c in resp.choices] == [
        (0, "one", "stop"),
        (1, "two", "length"),
    ]
    upstream.enqueue(
        sse(
            {"candidates": [candidate([{"text": "o"}], None, 0), candidate([{"text": "t"}], None, 1)]},
            {"candidates": [candidate([{"text": "ne"}], "STOP", 0)]},
            {"candidates": [candidate([{"text": "wo"}], "STOP", 1)], "usageMetadata": fg.default_usage()},
        )
    )
    built = llmrpc.stream_chunk_builder(collect(call(n=2, stream=True)))
    assert built.choices[0].message.content == "one"


def test_logprobs_are_translated(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    cand = candidate([{"text": "Hi"}], "STOP")
    cand["logprobsResult"] = {
        "topCandidates": [
            {"candidates": [{"token": "Hi", "logProbability": -0.1}, {"token": "Yo", "logProbability": -2.5}]}
        ],
        "chosenCandidates": [{"token": "Hi", "logProbability": -0.1}],
    }
    upstream.enqueue(JSONReply(200, {"candidates": [cand]}))
    resp = call(logprobs=True, top_logprobs=2)
    [token] = resp.choices[0].logprobs["content"]
    assert (token["token"], token["logprob"], token["bytes"]) == ("Hi", -0.1, [72, 105])
    assert [(t["token"], t["logprob"]) for t in token["top_logprobs"]] == [("Hi", -0.1), ("Yo", -2.5)]


# ---- errors --------------------------------------------------------------------------------------


def _quota_failure(quota_id: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": quota_id}]}


def _error_with_details(code: int, status: str, message: str, details: list[dict[str, Any]]) -> JSONReply:
    return JSONReply(
        code, {"error": {"code": code, "message": message, "status": status, "details": details}}
    )


_RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
_BILLING = "You exceeded your current quota, please check your plan and billing details."


@pytest.mark.parametrize(
    ("reply", "cls", "reason", "status"),
    [
        (fg.api_key_invalid(), llmrpc.AuthenticationError, "PROVIDER_AUTH_FAILED", 401),
        (
            fg.error(401, "UNAUTHENTICATED", "Request had invalid credentials."),
            llmrpc.AuthenticationError,
            "PROVIDER_AUTH_FAILED",
            401,
        ),
        (fg.resource_exhausted(), llmrpc.RateLimitError, "RATE_LIMITED", 429),
        (
            _error_with_details(
                429,
                "RESOURCE_EXHAUSTED",
                _BILLING,
                [_quota_failure("GenerateRequestsPerMinutePerProjectPerModel-FreeTier"), _RETRY_INFO],
            ),
            llmrpc.RateLimitError,
            "RATE_LIMITED",
            429,
        ),
        (
            _error_with_details(
                429,
                "RESOURCE_EXHAUSTED",
                _BILLING,
                [_quota_failure("GenerateRequestsPerDayPerProjectPerModel-FreeTier")],
            ),
            llmrpc.RateLimitError,
            "QUOTA_EXCEEDED",
            429,
        ),
        (fg.error(429, "RESOURCE_EXHAUSTED", _BILLING), llmrpc.RateLimitError, "QUOTA_EXCEEDED", 429),
        (
            fg.error(403, "PERMISSION_DENIED", "Permission denied on resource project."),
            llmrpc.PermissionDeniedError,
            "PROVIDER_PERMISSION_DENIED",
            403,
        ),
        (fg.not_found(), llmrpc.NotFoundError, "MODEL_NOT_FOUND", 404),
        (
            fg.error(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified"),
            llmrpc.BadRequestError,
            "PROVIDER_BAD_REQUEST",
            400,
        ),
        (
            fg.error(400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
            llmrpc.BadRequestError,
            "PROVIDER_BAD_REQUEST",
            400,
        ),
        (
            fg.error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            ),
            llmrpc.ContextWindowExceededError,
            "CONTEXT_WINDOW_EXCEEDED",
            400,
        ),
        (
            fg.error(500, "INTERNAL", "An internal error has occurred."),
            llmrpc.InternalServerError,
            "PROVIDER_UNAVAILABLE",
            500,
        ),
        (
            fg.error(503, "UNAVAILABLE", "The service is currently unavailable."),
            llmrpc.ServiceUnavailableError,
            "PROVIDER_UNAVAILABLE",
            503,
        ),
        (fg.unavailable(), llmrpc.ServiceUnavailableError, "PROVIDER_UNAVAILABLE", 503),
        (
            fg.error(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
            llmrpc.Timeout,
            "PROVIDER_TIMEOUT",
            408,
        ),
        (
            RawReply(502, b"<html>Bad Gateway</html>", "text/html"),
            llmrpc.BadGatewayError,
            "PROVIDER_UNAVAILABLE",
            502,
        ),
    ],
)
def test_http_errors(
    call: Callable[..., Any],
    upstream: FakeUpstream,
    reply: Any,
    cls: type[Exception],
    reason: str,
    status: int,
) -> None:
    upstream.enqueue(reply)
    with pytest.raises(cls) as info:
        call()
    err: Any = info.value
    assert err.reason == reason
    assert err.status_code == status
    assert err.metadata["provider"] == "gemini"
    if isinstance(reply, JSONReply) and isinstance(reply.body, dict):
        assert err.metadata["providerErrorType"] == reply.body["error"]["status"]


def test_error_reason_code_and_retry_delay_are_reported(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    upstream.enqueue(fg.api_key_invalid())
    with pytest.raises(llmrpc.AuthenticationError) as auth:
        call()
    assert auth.value.metadata["providerErrorCode"] == "API_KEY_INVALID"
    assert "API key not valid" in str(auth.value)
    upstream.enqueue(_error_with_details(429, "RESOURCE_EXHAUSTED", "slow down", [_RETRY_INFO]))
    with pytest.raises(llmrpc.RateLimitError) as limited:
        call()
    assert limited.value.retry_after == 37


def test_rate_limit_is_retried(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(fg.resource_exhausted(), fg.generate_content("second time lucky"))
    resp = call(num_retries=1)
    assert resp.choices[0].message.content == "second time lucky"
    assert [a["outcome"] for a in resp._hidden_params["attempt_log"]] == ["RATE_LIMITED", "ok"]


def test_error_body_with_status_200_and_malformed_bodies(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        JSONReply(200, {"error": {"code": 429, "message": "slow", "status": "RESOURCE_EXHAUSTED"}})
    )
    with pytest.raises(llmrpc.RateLimitError):
        call()
    for reply in (RawReply(200, b"not json", "application/json"), JSONReply(200, {"usageMetadata": {}})):
        upstream.enqueue(reply)
        with pytest.raises(llmrpc.APIError) as info:
            call()
        assert info.value.reason == "PROVIDER_BAD_RESPONSE"  # type: ignore[attr-defined]


def test_raw_json_error_mid_stream(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(fg.stream_generate_content(["Hel", "lo", " world"], error_after=2))
    received: list[str] = []
    with pytest.raises(llmrpc.InternalServerError) as info:
        for chunk in call(stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hello"
    assert info.value.reason == "PROVIDER_UNAVAILABLE"
    assert "internal error" in str(info.value)


@pytest.mark.parametrize(
    ("error", "cls", "reason"),
    [
        (
            {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"},
            llmrpc.RateLimitError,
            "RATE_LIMITED",
        ),
        (
            {"code": 400, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT"},
            llmrpc.BadRequestError,
            "PROVIDER_BAD_REQUEST",
        ),
        ({"message": "boom"}, llmrpc.APIError, "PROVIDER_STREAM_ERROR"),
    ],
)
def test_data_error_event_mid_stream(
    call: Callable[..., Any], upstream: FakeUpstream, error: dict[str, Any], cls: type[Exception], reason: str
) -> None:
    upstream.enqueue(sse({"candidates": [candidate([{"text": "partial"}])]}, {"error": error}))
    received: list[Any] = []
    with pytest.raises(cls) as info:
        received.extend(call(stream=True))
    assert info.value.reason == reason  # type: ignore[attr-defined]
    assert str(error["message"]) in str(info.value)


def test_stream_without_finish_reason_is_truncated(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(sse({"candidates": [candidate([{"text": "cut"}])]}))
    with pytest.raises(llmrpc.APIError) as info:
        collect(call(stream=True))
    assert info.value.reason == "PROVIDER_STREAM_ERROR"  # type: ignore[attr-defined]
    upstream.enqueue(SSEReply(["data: {not json"]))
    with pytest.raises(llmrpc.APIError) as bad:
        collect(call(stream=True))
    assert bad.value.reason == "PROVIDER_BAD_RESPONSE"  # type: ignore[attr-defined]


# ---- configuration -------------------------------------------------------------------------------


def test_google_api_key_env_and_versioned_base(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    gw = start_gateway(env={"GOOGLE_API_KEY": "google-key", "GEMINI_API_BASE": upstream.url + "/v1beta/"})
    with llmrpc.Client(gw.address) as c:
        llmrpc.completion(model="gemini-2.5-pro", messages=USER, client=c)  # bare name routes here
    req = upstream.requests[-1]
    assert req.path == "/v1beta/models/gemini-2.5-pro:generateContent"
    assert req.headers["x-goog-api-key"] == "google-key"


def test_caller_key_and_api_base_win(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    call(api_key="caller-key", api_base=upstream.url)
    assert upstream.requests[-1].headers["x-goog-api-key"] == "caller-key"


def test_missing_key_fails_before_calling(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    gw = start_gateway(env={"GEMINI_API_BASE": upstream.url})
    with llmrpc.Client(gw.address) as c, pytest.raises(llmrpc.AuthenticationError) as info:
        llmrpc.completion(model=MODEL, messages=USER, client=c)
    assert "GEMINI_API_KEY" in str(info.value)
    assert upstream.requests == []


# ---- pure adapter checks -------------------------------------------------------------------------


def test_adapter_identity() -> None:
    [adapter] = adapters()
    assert isinstance(adapter, GeminiAdapter)
    assert adapter.name == "gemini"
    assert adapter.env_keys == ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    assert adapter.env_bases == ("GEMINI_API_BASE",)
    assert adapter.default_base == "https://generativelanguage.googleapis.com"
    assert "logit_bias" not in adapter.supported_params


def test_clean_schema_edge_cases() -> None:
    assert clean_schema({"type": ["string", "integer", "null"]}) == {
        "nullable": True,
        "anyOf": [{"type": "string"}, {"type": "integer"}],
    }
    assert clean_schema({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}) == {
        "anyOf": [{"type": "string", "nullable": True}, {"type": "integer", "nullable": True}]
    }
    assert clean_schema({"oneOf": [{"type": "string"}, {"type": "null"}], "description": "d"}) == {
        "type": "string",
        "description": "d",
        "nullable": True,
    }
    assert clean_schema({"const": "x"}) == {"enum": ["x"], "type": "string"}
    assert clean_schema({"enum": ["a", None], "type": "string"}) == {
        "enum": ["a"],
        "type": "string",
        "nullable": True,
    }
    merged = clean_schema(
        {
            "allOf": [
                {"properties": {"a": {"type": "string"}}, "required": ["a"]},
                {"properties": {"b": {"type": "number", "format": "double"}}, "required": ["b", "zz"]},
            ]
        }
    )
    assert merged == {
        "properties": {"a": {"type": "string"}, "b": {"type": "number", "format": "double"}},
        "required": ["a", "b"],
        "type": "object",
    }
    # a self-referencing schema terminates; an unknown reference is dropped
    tree = {
        "$ref": "#/definitions/T",
        "definitions": {"T": {"properties": {"kids": {"items": {"$ref": "#/definitions/T"}}}}},
    }
    assert clean_schema(tree) == {"properties": {"kids": {"items": {"type": "object"}}}, "type": "object"}
    assert clean_schema({"$ref": "other.json#/x", "description": "d"}) == {
        "type": "object",
        "description": "d",
    }
    source = {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "properties": {"k": {"type": "string"}},
    }
    clean_schema(source)
    assert "additionalProperties" in source  # the input is not modified


def _state() -> StreamState[wire.GeminiStream]:
    return StreamState(id="", created=1, model="gemini-2.5-flash", own=wire.GeminiStream())


def test_stream_event_parsing_without_the_gateway() -> None:
    state = _state()
    event = StreamEvent(
        data=json.dumps(
            {
                "candidates": [candidate([{"text": "hi", "thoughtSignature": SIG}], "STOP")],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "totalTokenCount": 4},
                "responseId": "r9",
                "modelVersion": "gemini-2.5-flash-001",
            }
        )
    )
    [chunk] = wire.parse_stream_event(event, state)
    assert isinstance(chunk, pb.StreamCompleteResponse)
    assert (chunk.id, chunk.model, chunk.object) == ("r9", "gemini-2.5-flash-001", "chat.completion.chunk")
    choice = chunk.choices[0]
    assert choice.delta.content == "hi"
    assert [(b.thinking, b.signature) for b in choice.delta.thinking_blocks] == [("", SIG)]
    assert state.finished
    [usage] = GeminiAdapter().finish_stream(state)
    assert usage.usage.total_tokens == 4 and not usage.choices


def test_raw_error_array_raises_a_classified_error() -> None:
    raw = StreamEvent(
        data=json.dumps([{"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}]),
        event="raw",
    )
    with pytest.raises(ProviderError) as info:
        wire.parse_stream_event(raw, _state())
    assert info.value.kind is ErrorKind.UNAVAILABLE and info.value.status == 503
    with pytest.raises(ProviderError) as garbage:
        wire.parse_stream_event(StreamEvent(data="<html>", event="raw"), _state())
    assert garbage.value.kind is ErrorKind.STREAM_ERROR


def test_map_error_tolerates_any_body() -> None:
    adapter = GeminiAdapter()
    for body in (b"", b"[]", b"null", b"42", b'{"error": "plain string"}', b'{"unexpected": true}'):
        err = adapter.map_error(500, {}, body)
        assert err.kind is ErrorKind.UNAVAILABLE
    assert adapter.map_error(429, {"retry-after": "3"}, b"{}").retry_after == 3
