"""The ``anthropic/`` provider (Anthropic Messages API) through the real gateway and the thin client,
against the fake Anthropic upstream; a few pure adapter checks at the end."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import llmrpc
import pytest
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc_server.providers import _anthropic_stream as wire
from llmrpc_server.providers.anthropic import AnthropicAdapter, adapters, messages_url
from llmrpc_server.providers.base import ErrorKind, ProviderError, StreamEvent, Target

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream, JSONReply, RawReply, SSEReply
from tests.upstreams import anthropic as fa

MODEL = "anthropic/claude-x"
KEY = "sk-ant-test"
USER = [{"role": "user", "content": "Hi"}]
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
NO_ARGS: dict[str, Any] = {"type": "function", "function": {"name": "get_time"}}
StartGateway = Callable[..., GatewayThread]


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=fa.default_handler) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream) -> Iterator[GatewayThread]:
    with GatewayThread(
        gateway_settings({"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_API_BASE": upstream.url})
    ) as gw:
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
        return llmrpc.completion(model=MODEL, messages=messages or USER, client=client, **kwargs)

    return run


def sent(upstream: FakeUpstream, n: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = upstream.requests[n].json()
    return body


def stream_reply(*events: tuple[str, dict[str, Any]]) -> SSEReply:
    return SSEReply([fa.event(name, {"type": name, **data}) for name, data in events])


def start_event(usage: dict[str, Any] | None = None, id: str = "msg_s1") -> tuple[str, dict[str, Any]]:
    message: dict[str, Any] = {
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage or {"input_tokens": 3, "output_tokens": 1},
    }
    return "message_start", {"message": message}


def collect(stream: Any) -> list[Any]:
    return list(stream)


# ---- plain text, wire format -------------------------------------------------------------------


def test_plain_text_and_what_the_upstream_received(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    resp = call()
    assert resp.choices[0].message.content == "echo: Hi"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].provider_specific_fields == {"provider_finish_reason": "end_turn"}
    assert resp.id == "msg_01"  # Anthropic's id, not a minted chatcmpl-
    assert resp.model == "claude-x"
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.tool_calls is None
    assert resp._hidden_params["provider_request_id"] == fa.REQUEST_ID
    assert resp._hidden_params["custom_llm_provider"] == "anthropic"

    req = upstream.requests[0]
    assert (req.method, req.path) == ("POST", "/v1/messages")
    assert req.headers["x-api-key"] == KEY
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.headers["content-type"] == "application/json"
    assert "authorization" not in req.headers
    assert "anthropic-beta" not in req.headers
    assert req.json() == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": 4096,
    }


def test_system_and_developer_become_top_level_system_blocks(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    call(
        [
            {"role": "system", "content": "Be brief.", "cache_control": {"type": "ephemeral"}},
            {
                "role": "developer",
                "content": [
                    {"type": "text", "text": "Rule one."},
                    {
                        "type": "text",
                        "text": "Rule two.",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    },
                ],
            },
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Late system text."},
        ]
    )
    body = sent(upstream)
    assert body["system"] == [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Rule one."},
        {"type": "text", "text": "Rule two.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": "Late system text."},
    ]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


def test_sampling_params_and_passthroughs(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    call(
        max_completion_tokens=100,
        stop=["END", "STOP"],
        temperature=0.5,
        top_p=0.9,
        user="user-123",
        top_k=40,
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14", "X-Trace": "t1"},
    )
    body = sent(upstream)
    assert body["max_tokens"] == 100
    assert body["stop_sequences"] == ["END", "STOP"]
    assert body["temperature"] == 0.5
    assert body["top_p"] == 0.9
    assert body["metadata"] == {"user_id": "user-123"}
    assert body["top_k"] == 40  # extra_body merged last
    headers = upstream.requests[-1].headers
    assert headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert headers["x-trace"] == "t1"
    assert "max_completion_tokens" not in body and "stop" not in body and "user" not in body


def test_max_tokens_legacy_name_and_email_like_user_skipped(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    call(max_tokens=77, user="someone@example.com")
    body = sent(upstream)
    assert body["max_tokens"] == 77
    assert "metadata" not in body


def test_unsupported_params_rejected_or_dropped(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    with pytest.raises(llmrpc.UnsupportedParamsError):
        call(n=2, seed=1)
    assert upstream.requests == []
    call(n=2, seed=1, presence_penalty=0.5, logprobs=True, drop_params=True)
    body = sent(upstream)
    assert not {"n", "seed", "presence_penalty", "logprobs"} & body.keys()


def test_supported_params(client: llmrpc.Client) -> None:
    params = llmrpc.get_supported_openai_params(MODEL, client=client)
    assert set(params) - {"stream", "stream_options"} == {
        "temperature",
        "top_p",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "user",
        "reasoning_effort",
        "thinking",
        "web_search_options",
    }


# ---- thinking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effort", "budget"),
    [("minimal", 1024), ("low", 1024), ("medium", 2048), ("high", 4096), ("xhigh", 8192), ("max", 16384)],
)
def test_reasoning_effort_sets_thinking_budget_and_default_max_tokens(
    call: Callable[..., Any], upstream: FakeUpstream, effort: str, budget: int
) -> None:
    call(reasoning_effort=effort)
    body = sent(upstream)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert body["max_tokens"] == budget + 4096


@pytest.mark.parametrize("effort", ["none", "disable"])
def test_reasoning_effort_none_sends_no_thinking(
    call: Callable[..., Any], upstream: FakeUpstream, effort: str
) -> None:
    call(reasoning_effort=effort)
    body = sent(upstream)
    assert "thinking" not in body
    assert body["max_tokens"] == 4096


def test_thinking_passes_through_and_wins_over_effort(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    call(thinking={"type": "enabled", "budget_tokens": 3000}, reasoning_effort="high")
    assert sent(upstream)["thinking"] == {"type": "enabled", "budget_tokens": 3000}
    assert sent(upstream)["max_tokens"] == 7096
    call(thinking={"type": "enabled", "budget_tokens": 3000}, max_tokens=5000)
    assert sent(upstream)["max_tokens"] == 5000
    call(thinking={"type": "disabled"})
    assert sent(upstream)["thinking"] == {"type": "disabled"}
    assert sent(upstream)["max_tokens"] == 4096


def test_thinking_returned_as_reasoning_content_and_blocks(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        fa.message(
            "Answer.", thinking=[("step one. ", "sig-a"), ("step two.", "sig-b")], redacted=["ENCRYPTED"]
        )
    )
    msg = call(reasoning_effort="low").choices[0].message
    assert msg.content == "Answer."
    assert msg.reasoning_content == "step one. step two."
    assert msg.thinking_blocks == [
        {"type": "thinking", "thinking": "step one. ", "signature": "sig-a"},
        {"type": "thinking", "thinking": "step two.", "signature": "sig-b"},
        {"type": "redacted_thinking", "data": "ENCRYPTED"},
    ]


def test_two_turn_thinking_tool_loop_sends_thinking_first_unchanged(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        fa.message(
            "Let me check.",
            thinking=[("I should call the weather tool.", "EqQBsig==")],
            redacted=["R3D4CT3D"],
            tool_uses=[("toolu_01", "get_weather", {"city": "Oslo"})],
        )
    )
    messages: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = call(messages, tools=[WEATHER], reasoning_effort="medium")
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert msg.tool_calls[0].function.arguments == '{"city": "Oslo"}'

    messages += [msg, {"role": "tool", "tool_call_id": "toolu_01", "content": "12C, cloudy"}]
    second = call(messages, tools=[WEATHER], reasoning_effort="medium")
    assert second.choices[0].message.content.startswith("echo: ")
    body = sent(upstream)
    assistant = body["messages"][1]
    assert assistant["role"] == "assistant"
    assert assistant["content"][0] == {
        "type": "thinking",
        "thinking": "I should call the weather tool.",
        "signature": "EqQBsig==",
    }
    assert assistant["content"][1] == {"type": "redacted_thinking", "data": "R3D4CT3D"}
    assert assistant["content"][2:] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "12C, cloudy"}],
    }
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}


def test_two_turn_thinking_tool_loop_streamed(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(
        fa.message_stream(
            None,
            thinking=[(["Need ", "the tool."], "sig-stream")],
            tool_uses=[("toolu_9", "get_weather", ['{"ci', 'ty": "Oslo"}'])],
        )
    )
    messages: list[Any] = [{"role": "user", "content": "Weather?"}]
    chunks = collect(call(messages, tools=[WEATHER], reasoning_effort="low", stream=True))
    built = llmrpc.stream_chunk_builder(chunks)
    assert built is not None
    msg = built.choices[0].message
    assert msg.reasoning_content == "Need the tool."
    assert msg.thinking_blocks == [
        {"type": "thinking", "thinking": "Need the tool.", "signature": "sig-stream"}
    ]
    assert msg.tool_calls is not None
    assert msg.tool_calls[0].function.arguments == '{"city": "Oslo"}'
    assert built.choices[0].finish_reason == "tool_calls"

    messages += [msg, {"role": "tool", "tool_call_id": "toolu_9", "content": "sunny"}]
    call(messages, tools=[WEATHER], reasoning_effort="low")
    content = sent(upstream)["messages"][1]["content"]
    assert content[0] == {"type": "thinking", "thinking": "Need the tool.", "signature": "sig-stream"}
    assert content[1] == {
        "type": "tool_use",
        "id": "toolu_9",
        "name": "get_weather",
        "input": {"city": "Oslo"},
    }


def test_streamed_thinking_deltas(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(fa.message_stream(["Hi"], thinking=[(["a", "b"], "sig")], redacted=["RED"]))
    chunks = collect(call(reasoning_effort="low", stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert [d.reasoning_content for d in deltas if d.reasoning_content] == ["a", "b"]
    blocks = [b for d in deltas for b in d.thinking_blocks or ()]
    assert blocks == [
        {"type": "thinking", "thinking": "a", "signature": None},
        {"type": "thinking", "thinking": "b", "signature": None},
        {"type": "thinking", "thinking": "", "signature": "sig"},
        {"type": "redacted_thinking", "data": "RED"},
    ]
    assert deltas[0].role == "assistant"
    assert sum(1 for d in deltas if d.role) == 1


# ---- tools -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tool_choice(call: Callable[..., Any], upstream: FakeUpstream, choice: Any, expected: Any) -> None:
    call(tools=[WEATHER], tool_choice=choice)
    assert sent(upstream)["tool_choice"] == expected


def test_tools_translation_and_parallel_flag(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    cached = {**NO_ARGS, "cache_control": {"type": "ephemeral"}}
    call(tools=[WEATHER, cached], parallel_tool_calls=False)
    body = sent(upstream)
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": WEATHER["function"]["parameters"],
        },
        {
            "name": "get_time",
            "input_schema": {"type": "object", "properties": {}},
            "cache_control": {"type": "ephemeral"},
        },
    ]
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    call(tools=[WEATHER], tool_choice="required", parallel_tool_calls=True)
    assert sent(upstream)["tool_choice"] == {"type": "any", "disable_parallel_tool_use": False}
    call(tools=[WEATHER], tool_choice="none", parallel_tool_calls=False)
    assert sent(upstream)["tool_choice"] == {"type": "none"}


def test_parallel_tool_calls_in_response(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(
        fa.message(
            None,
            tool_uses=[
                ("toolu_a", "get_weather", {"city": "Oslo"}),
                ("toolu_b", "get_time", {}),
            ],
        )
    )
    resp = call(tools=[WEATHER, NO_ARGS])
    msg = resp.choices[0].message
    assert msg.content is None
    assert [(c.id, c.type, c.function.name, c.function.arguments) for c in msg.tool_calls] == [
        ("toolu_a", "function", "get_weather", '{"city": "Oslo"}'),
        ("toolu_b", "function", "get_time", "{}"),
    ]
    assert resp.choices[0].finish_reason == "tool_calls"
    assert resp.choices[0].provider_specific_fields == {"provider_finish_reason": "tool_use"}


def test_two_turn_tool_round_trip_merges_results(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(
        fa.message(
            "Checking both.",
            tool_uses=[
                ("toolu_a", "get_weather", {"city": "Oslo"}),
                ("toolu_b", "get_time", {}),
            ],
        )
    )
    messages: list[Any] = [{"role": "user", "content": "Weather and time?"}]
    first = call(messages, tools=[WEATHER, NO_ARGS])
    messages += [
        first.choices[0].message,
        {"role": "tool", "tool_call_id": "toolu_a", "content": "12C"},
        {
            "role": "tool",
            "tool_call_id": "toolu_b",
            "content": [{"type": "text", "text": "10:00"}],
            "cache_control": {"type": "ephemeral"},
        },
        {"role": "user", "content": "Thanks, summarize."},
    ]
    resp = call(messages, tools=[WEATHER, NO_ARGS])
    assert resp.choices[0].message.content == "echo: Thanks, summarize."
    turns = sent(upstream)["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        {"type": "text", "text": "Checking both."},
        {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}},
    ]
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "12C"},
        {
            "type": "tool_result",
            "tool_use_id": "toolu_b",
            "content": [{"type": "text", "text": "10:00"}],
            "cache_control": {"type": "ephemeral"},
        },
        {"type": "text", "text": "Thanks, summarize."},
    ]


def test_consecutive_same_role_messages_merge_and_prefill_is_stripped(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    call(
        [
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two", "name": "bob"},
            {"role": "assistant", "content": "Sure: "},
            {"role": "assistant", "content": "The answer is  "},
        ]
    )
    assert sent(upstream)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Sure:"}, {"type": "text", "text": "The answer is"}],
        },
    ]


def test_history_with_tool_calls_but_no_tools_gets_a_dummy_tool(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    call(
        [
            {"role": "user", "content": "time?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "10:00"},
        ]
    )
    body = sent(upstream)
    assert [t["name"] for t in body["tools"]] == ["dummy_tool"]
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}
    ]
    assert "tool_choice" not in body


def test_legacy_function_call_history(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    call(
        [
            {"role": "user", "content": "time?"},
            {"role": "assistant", "content": None, "function_call": {"name": "get_time", "arguments": "{}"}},
            {"role": "function", "name": "get_time", "content": "10:00"},
        ],
        tools=[NO_ARGS],
    )
    turns = sent(upstream)["messages"]
    tool_use = turns[1]["content"][0]
    assert tool_use["type"] == "tool_use" and tool_use["name"] == "get_time"
    assert turns[2]["content"] == [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "10:00"}]


def test_invalid_tool_arguments_in_history_is_a_bad_request(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    with pytest.raises(llmrpc.BadRequestError, match="not valid JSON"):
        call(
            [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "t", "content": "y"},
            ],
            tools=[NO_ARGS],
        )
    assert upstream.requests == []


def test_streamed_tool_calls(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(
        fa.message_stream(
            ["Let me look."],
            tool_uses=[
                ("toolu_a", "get_weather", ['{"city"', ': "Oslo"}']),
                ("toolu_b", "get_time", []),
            ],
        )
    )
    chunks = collect(call(tools=[WEATHER, NO_ARGS], stream=True))
    frags = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
    first = frags[0]
    assert (first.index, first.id, first.type, first.function.name, first.function.arguments) == (
        0,
        "toolu_a",
        "function",
        "get_weather",
        "",
    )
    assert [f.function.arguments for f in frags if f.index == 0][1:] == ['{"city"', ': "Oslo"}']
    later = [f for f in frags if f.index == 0][1:]
    assert all(f.id is None and f.function.name is None for f in later)
    assert [(f.id, f.function.name, f.function.arguments) for f in frags if f.index == 1] == [
        ("toolu_b", "get_time", ""),
        (None, None, "{}"),
    ]
    finals = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].finish_reason == "tool_calls"
    built = llmrpc.stream_chunk_builder(chunks)
    assert built is not None
    assert [c.function.arguments for c in built.choices[0].message.tool_calls or ()] == [
        '{"city": "Oslo"}',
        "{}",
    ]
    assert built.choices[0].message.content == "Let me look."


# ---- JSON mode ---------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name"],
}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}


def test_json_schema_uses_a_forced_tool_answered_as_content(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    upstream.enqueue(fa.message(None, tool_uses=[("toolu_j", "json_tool_call", {"name": "Ada", "age": 36})]))
    resp = call(response_format=JSON_SCHEMA_FORMAT)
    body = sent(upstream)
    assert body["tools"] == [{"name": "json_tool_call", "input_schema": SCHEMA}]
    assert body["tool_choice"] == {"type": "tool", "name": "json_tool_call"}
    assert "response_format" not in body
    choice = resp.choices[0]
    assert json.loads(choice.message.content) == {"name": "Ada", "age": 36}
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert choice.provider_specific_fields == {"provider_finish_reason": "tool_use"}


def test_json_object_and_thinking_do_not_force_the_tool(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    call(response_format={"type": "json_object"}, reasoning_effort="low", tools=[WEATHER])
    body = sent(upstream)
    assert body["tools"][-1] == {
        "name": "json_tool_call",
        "input_schema": {"type": "object", "properties": {}, "additionalProperties": True},
    }
    assert "tool_choice" not in body
    call(response_format={"type": "text"})
    assert "tools" not in sent(upstream)


def test_non_object_schema_is_wrapped_and_unwrapped(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    schema = {"type": "array", "items": {"type": "string"}}
    fmt = {"type": "json_schema", "json_schema": {"name": "names", "schema": schema}}
    upstream.enqueue(fa.message(None, tool_uses=[("toolu_j", "json_tool_call", {"values": ["a", "b"]})]))
    resp = call(response_format=fmt)
    assert sent(upstream)["tools"][0]["input_schema"] == {
        "type": "object",
        "properties": {"values": schema},
        "required": ["values"],
    }
    assert json.loads(resp.choices[0].message.content) == ["a", "b"]
    upstream.enqueue(
        fa.message_stream(None, tool_uses=[("toolu_j", "json_tool_call", ['{"values": ', '["a"]}'])])
    )
    chunks = collect(call(response_format=fmt, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text) == ["a"]


def test_json_mode_streams_as_content(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(
        fa.message_stream(None, tool_uses=[("toolu_j", "json_tool_call", ['{"name": ', '"Ada"}'])])
    )
    chunks = collect(call(response_format=JSON_SCHEMA_FORMAT, stream=True))
    choices = [c.choices[0] for c in chunks if c.choices]
    assert [c.delta.content for c in choices if c.delta.content] == ['{"name": ', '"Ada"}']
    assert all(not c.delta.tool_calls for c in choices)
    assert choices[-1].finish_reason == "stop"
    assert choices[-1].provider_specific_fields == {"provider_finish_reason": "tool_use"}


# ---- content: images, documents, cache_control -------------------------------------------------


def test_images_documents_and_cache_control(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    call(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look", "cache_control": {"type": "ephemeral"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": "https://example.com/cat.jpg"},
                    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/paper.pdf"}},
                ],
                "cache_control": {"type": "ephemeral", "ttl": "5m"},
            }
        ]
    )
    req = upstream.requests[-1]
    assert "anthropic-beta" not in req.headers
    assert req.json()["messages"][0]["content"] == [
        {"type": "text", "text": "Look", "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
        },
        {
            "type": "document",
            "source": {"type": "url", "url": "https://example.com/paper.pdf"},
            "cache_control": {"type": "ephemeral", "ttl": "5m"},
        },
    ]


def test_file_id_uses_the_files_api_beta(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    call(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Summarize"},
                    {"type": "file", "file": {"file_id": "file_011"}},
                ],
            }
        ],
        extra_headers={"anthropic-beta": "foo-2025-01-01"},
    )
    req = upstream.requests[-1]
    assert req.json()["messages"][0]["content"][1] == {
        "type": "document",
        "source": {"type": "file", "file_id": "file_011"},
    }
    assert req.headers["anthropic-beta"] == "foo-2025-01-01,files-api-2025-04-14"


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "image_url", "image_url": {"url": "ftp://example.com/x.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}},
    ],
)
def test_unsendable_content_is_a_bad_request(
    call: Callable[..., Any], upstream: FakeUpstream, part: Any
) -> None:
    with pytest.raises(llmrpc.BadRequestError) as info:
        call([{"role": "user", "content": [part]}])
    assert info.value.metadata.get("param", "").startswith("messages[0].content_parts[0]")
    assert upstream.requests == []


# ---- usage -------------------------------------------------------------------------------------


def test_usage_counts_cache_reads_and_writes_in_prompt_tokens(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    usage = fa.default_usage(input_tokens=10, output_tokens=5, cache_read=100, cache_write=20)
    upstream.enqueue(fa.message("ok", usage=usage))
    u = call().usage
    assert u.prompt_tokens == 130  # input 10 + cache read 100 + cache write 20
    assert u.completion_tokens == 5
    assert u.total_tokens == 135
    assert u.prompt_tokens_details.cached_tokens == 100
    assert u.cache_read_input_tokens == 100
    assert u.cache_creation_input_tokens == 20
    assert u.prompt_tokens_details.cache_creation_tokens == 20


def test_streaming_with_usage(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    usage = fa.default_usage(input_tokens=4, output_tokens=9, cache_read=50, cache_write=6)
    upstream.enqueue(fa.message_stream(["Hel", "lo"], usage=usage))
    chunks = collect(call(stream=True, stream_options={"include_usage": True}))
    assert {c.id for c in chunks} == {"msg_01"}
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-2].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert len(last.choices) == 1 and last.choices[0].finish_reason is None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (60, 9, 69)
    assert last.usage.prompt_tokens_details.cached_tokens == 50
    assert last.usage.cache_creation_input_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])
    assert upstream.requests[-1].json()["stream"] is True


def test_streaming_without_usage_sends_no_usage_chunk(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    chunks = collect(call(stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: Hi"


def test_stream_usage_is_cumulative_and_ping_ignored(
    call: Callable[..., Any], upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        stream_reply(
            start_event({"input_tokens": 3, "output_tokens": 1, "cache_read_input_tokens": 2}),
            ("ping", {}),
            ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "ok"}}),
            ("content_block_stop", {"index": 0}),
            (
                "message_delta",
                {
                    "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                    "usage": {"output_tokens": 30, "input_tokens": 3, "cache_read_input_tokens": 2},
                },
            ),
            ("message_stop", {}),
        )
    )
    chunks = collect(call(stream=True, stream_options={"include_usage": True}))
    assert chunks[0].id == "msg_s1"
    assert chunks[-2].choices[0].finish_reason == "length"
    u = chunks[-1].usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cache_read_input_tokens) == (5, 30, 35, 2)


# ---- stop reasons ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "stop"),
    ],
)
def test_stop_reasons(call: Callable[..., Any], upstream: FakeUpstream, raw: str, expected: str) -> None:
    upstream.enqueue(fa.message("x", stop_reason=raw), fa.message_stream(["x"], stop_reason=raw))
    resp = call()
    assert resp.choices[0].finish_reason == expected
    assert resp.choices[0].provider_specific_fields == {"provider_finish_reason": raw}
    final = [c.choices[0] for c in call(stream=True) if c.choices and c.choices[0].finish_reason]
    assert [(c.finish_reason, c.provider_specific_fields) for c in final] == [
        (expected, {"provider_finish_reason": raw})
    ]


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "cls", "reason", "status"),
    [
        (fa.prompt_too_long(), llmrpc.ContextWindowExceededError, "CONTEXT_WINDOW_EXCEEDED", 400),
        (
            fa.error(400, "invalid_request_error", "messages: field required"),
            llmrpc.BadRequestError,
            "PROVIDER_BAD_REQUEST",
            400,
        ),
        (
            fa.error(400, "invalid_request_error", "Output blocked by content filtering policy"),
            llmrpc.ContentPolicyViolationError,
            "CONTENT_POLICY_VIOLATION",
            400,
        ),
        (fa.invalid_api_key(), llmrpc.AuthenticationError, "PROVIDER_AUTH_FAILED", 401),
        (
            fa.error(402, "billing_error", "Your credit balance is too low"),
            llmrpc.RateLimitError,
            "QUOTA_EXCEEDED",
            429,
        ),
        (
            fa.error(403, "permission_error", "no access"),
            llmrpc.PermissionDeniedError,
            "PROVIDER_PERMISSION_DENIED",
            403,
        ),
        (fa.error(404, "not_found_error", "model: claude-x"), llmrpc.NotFoundError, "MODEL_NOT_FOUND", 404),
        (
            fa.error(413, "request_too_large", "Request exceeds the maximum size"),
            llmrpc.BadRequestError,
            "REQUEST_TOO_LARGE",
            413,
        ),
        (fa.rate_limited(retry_after=7), llmrpc.RateLimitError, "RATE_LIMITED", 429),
        (fa.api_error(), llmrpc.InternalServerError, "PROVIDER_UNAVAILABLE", 500),
        (fa.error(504, "timeout_error", "Request timed out"), llmrpc.Timeout, "PROVIDER_TIMEOUT", 408),
        (fa.overloaded(), llmrpc.InternalServerError, "PROVIDER_OVERLOADED", 529),
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
    assert err.metadata["provider"] == "anthropic"
    if isinstance(reply, JSONReply):
        assert err.metadata["providerRequestId"] == fa.REQUEST_ID
        assert err.metadata["providerErrorType"] == reply.body["error"]["type"]  # type: ignore[index, call-overload]


def test_rate_limit_carries_retry_after(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(fa.rate_limited(retry_after=7))
    with pytest.raises(llmrpc.RateLimitError) as info:
        call()
    assert info.value.retry_after == 7


def test_overloaded_is_retried(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(fa.overloaded(), fa.message("second time lucky"))
    resp = call(num_retries=1)
    assert resp.choices[0].message.content == "second time lucky"
    assert [a["outcome"] for a in resp._hidden_params["attempt_log"]] == ["PROVIDER_OVERLOADED", "ok"]


def test_error_body_with_status_200_is_an_error(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(
        JSONReply(200, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    )
    with pytest.raises(llmrpc.InternalServerError):
        call()


def test_malformed_success_body_is_a_bad_response(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(RawReply(200, b"not json", "application/json"))
    with pytest.raises(llmrpc.APIError) as info:
        call()
    assert info.value.reason == "PROVIDER_BAD_RESPONSE"


def test_error_event_mid_stream(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(fa.message_stream(["Hel", "lo", " world"], error_after=2))
    received: list[str] = []
    with pytest.raises(llmrpc.InternalServerError) as info:
        for chunk in call(stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hello"
    assert info.value.reason == "PROVIDER_OVERLOADED"
    assert info.value.status_code == 529


@pytest.mark.parametrize(
    ("error_type", "cls", "reason"),
    [
        ("api_error", llmrpc.APIError, "PROVIDER_STREAM_ERROR"),
        ("rate_limit_error", llmrpc.RateLimitError, "RATE_LIMITED"),
        ("invalid_request_error", llmrpc.BadRequestError, "PROVIDER_BAD_REQUEST"),
    ],
)
def test_error_event_kinds(
    call: Callable[..., Any], upstream: FakeUpstream, error_type: str, cls: type[Exception], reason: str
) -> None:
    upstream.enqueue(
        stream_reply(
            start_event(),
            ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "partial"}}),
            ("error", {"error": {"type": error_type, "message": "boom"}}),
        )
    )
    received: list[Any] = []
    with pytest.raises(cls) as info:
        received.extend(call(stream=True))
    assert info.value.reason == reason  # type: ignore[attr-defined]
    assert "boom" in str(info.value)


def test_stream_without_message_stop_is_truncated(call: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(
        stream_reply(
            start_event(),
            ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": "cut"}}),
        )
    )
    with pytest.raises(llmrpc.APIError) as info:
        collect(call(stream=True))
    assert info.value.reason == "PROVIDER_STREAM_ERROR"


# ---- configuration -----------------------------------------------------------------------------


def test_base_url_and_auth_token_env(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    gw = start_gateway(env={"ANTHROPIC_AUTH_TOKEN": "tok-1", "ANTHROPIC_BASE_URL": upstream.url + "/v1"})
    with llmrpc.Client(gw.address) as c:
        llmrpc.completion(model=MODEL, messages=USER, client=c)
    req = upstream.requests[-1]
    assert req.path == "/v1/messages"
    assert req.headers["x-api-key"] == "tok-1"


def test_bare_claude_name_routes_here_and_caller_key_wins(
    client: llmrpc.Client, upstream: FakeUpstream
) -> None:
    llmrpc.completion(model="claude-x", messages=USER, client=client, api_key="sk-caller")
    assert upstream.requests[-1].headers["x-api-key"] == "sk-caller"


def test_missing_key_fails_before_calling(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    gw = start_gateway(env={"ANTHROPIC_API_BASE": upstream.url})
    with llmrpc.Client(gw.address) as c, pytest.raises(llmrpc.AuthenticationError) as info:
        llmrpc.completion(model=MODEL, messages=USER, client=c)
    assert info.value.reason == "PROVIDER_API_KEY_MISSING"
    assert upstream.requests == []


# ---- pure adapter checks -----------------------------------------------------------------------


def test_adapter_registration() -> None:
    (adapter,) = adapters()
    assert adapter.name == "anthropic"
    assert adapter.env_keys == ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
    assert adapter.env_bases == ("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL")
    assert adapter.default_base == "https://api.anthropic.com"
    assert messages_url("https://api.anthropic.com") == "https://api.anthropic.com/v1/messages"
    assert messages_url("https://proxy/v1/") == "https://proxy/v1/messages"
    assert messages_url("https://proxy/v1/messages") == "https://proxy/v1/messages"


def test_usage_normalization_rule() -> None:
    numbers = wire.usage_numbers(
        {
            "input_tokens": 40,
            "output_tokens": 55,
            "cache_creation_input_tokens": 7,
            "cache_read_input_tokens": 1200,
            "output_tokens_details": {"thinking_tokens": 30},
        }
    )
    usage = wire.usage_from_anthropic(numbers)
    assert usage.prompt_tokens == 40 + 1200 + 7
    assert usage.total_tokens == 40 + 1200 + 7 + 55
    assert usage.prompt_tokens_details.cached_tokens == usage.cache_read_input_tokens == 1200
    assert usage.prompt_tokens_details.cache_write_tokens == usage.cache_creation_input_tokens == 7
    assert usage.completion_tokens_details.reasoning_tokens == 30
    bare = wire.usage_from_anthropic(wire.usage_numbers({"input_tokens": 3, "output_tokens": 4}))
    assert not bare.HasField("prompt_tokens_details") and not bare.HasField("cache_read_input_tokens")


@pytest.mark.parametrize(
    ("error_type", "kind"),
    [
        ("overloaded_error", ErrorKind.OVERLOADED),
        ("rate_limit_error", ErrorKind.RATE_LIMIT),
        ("api_error", ErrorKind.STREAM_ERROR),
        ("billing_error", ErrorKind.QUOTA),
        ("request_too_large", ErrorKind.TOO_LARGE),
        ("timeout_error", ErrorKind.TIMEOUT),
        ("something_else", ErrorKind.STREAM_ERROR),
    ],
)
def test_stream_error_classification(error_type: str, kind: ErrorKind) -> None:
    err = wire.stream_error(
        {"type": "error", "error": {"type": error_type, "message": "m"}, "request_id": "r1"}
    )
    assert err.kind is kind
    assert err.status is None
    assert err.request_id == "r1"


def test_map_error_never_raises_on_garbage() -> None:
    err = AnthropicAdapter().map_error(500, {}, b"\xff\xfe not json")
    assert isinstance(err, ProviderError)
    assert err.kind is ErrorKind.UNAVAILABLE
    err = AnthropicAdapter().map_error(400, {"request-id": "req_h"}, b'{"type":"error","error":"weird"}')
    assert err.kind is ErrorKind.BAD_REQUEST and err.request_id == "req_h"


def test_bad_stream_json_is_a_bad_response() -> None:
    adapter = AnthropicAdapter()
    target = Target(provider="anthropic", model="claude-x", api_base="http://x", api_key="k")
    state = adapter.new_stream_state(pb.CompleteRequest(model=MODEL), target)
    with pytest.raises(ProviderError) as info:
        list(adapter.parse_stream_event(StreamEvent("{nope", "content_block_delta"), state))
    assert info.value.kind is ErrorKind.BAD_RESPONSE
