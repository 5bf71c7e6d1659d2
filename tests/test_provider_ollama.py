"""Ollama's native ``/api/chat`` (``ollama_chat/`` and ``ollama/``) through the real gateway and the
thin client, against a fake Ollama (NDJSON streams, object tool arguments, counters on the done line)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import llmrpc
import pytest

from tests.support import GatewayThread
from tests.upstreams import FakeUpstream, JSONReply, NDJSONReply
from tests.upstreams import ollama as oll

USER = [{"role": "user", "content": "hi"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
StartGateway = Callable[..., GatewayThread]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oll.default_handler) as up:
        yield up


@pytest.fixture
def client_for(start_gateway: StartGateway, upstream: FakeUpstream) -> Iterator[Callable[..., llmrpc.Client]]:
    clients: list[llmrpc.Client] = []

    def make(**env: str) -> llmrpc.Client:
        client = llmrpc.Client(start_gateway(env={"OLLAMA_API_BASE": upstream.url} | env).address)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(client_for: Callable[..., llmrpc.Client]) -> llmrpc.Client:
    return client_for()


def test_plain_text_unary(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oll.chat("Hello there", prompt_eval_count=26, eval_count=9))
    resp = client.completion("ollama_chat/llama3.2", USER)
    choice = resp.choices[0]
    assert choice.message.content == "Hello there" and choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert resp.model == "ollama_chat/llama3.2"
    assert resp.id.startswith("chatcmpl-")
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (26, 9, 35)
    sent = upstream.requests[-1]
    assert sent.path == "/api/chat"
    assert "authorization" not in sent.headers
    assert sent.json() == {"model": "llama3.2", "messages": USER, "stream": False, "options": {}}


def test_ollama_prefix_uses_the_chat_endpoint_too(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    resp = client.completion("ollama/qwen3:8b", USER)
    assert resp.choices[0].message.content == "echo: hi"
    assert resp.model == "ollama/qwen3:8b"
    assert upstream.requests[-1].path == "/api/chat" and upstream.requests[-1].json()["model"] == "qwen3:8b"


def test_optional_key_goes_to_the_configured_base(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    env = {"OLLAMA_API_KEY": "ol-key", "OLLAMA_API_BASE": upstream.url}
    with llmrpc.Client(start_gateway(env=env).address) as client:
        client.completion("ollama_chat/m", USER, api_base=upstream.url + "/")  # the configured base, named
    assert upstream.requests[-1].headers["authorization"] == "Bearer ol-key"
    assert upstream.requests[-1].path == "/api/chat"


def test_options_format_and_extra_kwargs(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"]}
    client.completion(
        "ollama_chat/llama3.2",
        USER,
        max_tokens=100,
        max_completion_tokens=64,
        temperature=0.3,
        top_p=0.9,
        seed=42,
        stop=["\n\n"],
        frequency_penalty=1.1,
        tool_choice="auto",
        tools=TOOLS,
        response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema}},
        top_k=40,
        num_ctx=8192,
        keep_alive="10m",
    )
    body = upstream.requests[-1].json()
    assert body["stream"] is False
    assert body["options"] == {
        "num_predict": 64,
        "temperature": 0.3,
        "top_p": 0.9,
        "seed": 42,
        "stop": ["\n\n"],
        "repeat_penalty": 1.1,
        "top_k": 40,
        "num_ctx": 8192,
    }
    assert body["format"] == schema
    assert body["keep_alive"] == "10m"
    assert "tool_choice" not in body
    assert body["tools"] == [{"type": "function", "function": TOOLS[0]["function"]}]
    client.completion("ollama_chat/llama3.2", USER, max_tokens=5, response_format={"type": "json_object"})
    body = upstream.requests[-1].json()
    assert body["options"] == {"num_predict": 5} and body["format"] == "json"


def test_streaming_with_usage(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oll.chat_stream(["Hel", "lo", "!"], prompt_eval_count=11, eval_count=3))
    chunks = list(
        client.completion("ollama_chat/llama3.2", USER, stream=True, stream_options={"include_usage": True})
    )
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert [c.choices[0].delta.content for c in content] == ["Hel", "lo", "!"]
    assert content[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in content[1:])
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices[0].finish_reason is None and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (11, 3, 14)
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].model == "ollama_chat/llama3.2"
    assert upstream.requests[-1].json()["stream"] is True


def test_streaming_without_usage(client: llmrpc.Client) -> None:
    chunks = list(client.completion("ollama_chat/llama3.2", USER, stream=True))
    assert all(getattr(c, "usage", None) is None for c in chunks)
    built = llmrpc.stream_chunk_builder(chunks)
    assert built is not None and built.choices[0].message.content == "echo: hi"


def test_length_finish(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oll.chat("trunc", done_reason="length"))
    assert client.completion("ollama_chat/m", USER, max_tokens=1).choices[0].finish_reason == "length"
    upstream.enqueue(oll.chat_stream(["a"], done_reason="length"))
    chunks = list(client.completion("ollama_chat/m", USER, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_two_turn_tool_round_trip(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oll.chat("", tool_calls=[("get_weather", {"city": "Oslo", "days": 2})]))
    first = client.completion("ollama_chat/llama3.2", [{"role": "user", "content": "Weather?"}], tools=TOOLS)
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert msg.content is None
    assert msg.tool_calls is not None and len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert re.fullmatch(r"call_[0-9a-f]{32}", call.id)
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {
        "city": "Oslo",
        "days": 2,
    }
    upstream.enqueue(oll.chat("Sunny, 20C."))
    history = [
        {"role": "user", "content": "Weather?"},
        msg,
        {"role": "tool", "tool_call_id": call.id, "content": "20C"},
    ]
    second = client.completion("ollama_chat/llama3.2", history, tools=TOOLS)
    assert second.choices[0].message.content == "Sunny, 20C."
    sent = upstream.requests[-1].json()["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}}],
    }
    assert sent[2] == {"role": "tool", "content": "20C", "tool_name": "get_weather"}


def test_streamed_tool_calls_arrive_whole(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(
        oll.chat_stream([], tool_calls=[("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Rome"})])
    )
    chunks = list(client.completion("ollama_chat/llama3.2", USER, tools=TOOLS, stream=True))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert [(d.index, d.type, d.function.name) for d in deltas] == [
        (0, "function", "get_weather"),
        (1, "function", "get_weather"),
    ]
    assert all(d.id and d.id.startswith("call_") for d in deltas)
    built = llmrpc.stream_chunk_builder(chunks)
    assert built is not None and built.choices[0].finish_reason == "tool_calls"
    assert [json.loads(c.function.arguments) for c in built.choices[0].message.tool_calls] == [
        {"city": "Oslo"},
        {"city": "Rome"},
    ]


@pytest.mark.parametrize(
    ("model", "effort", "think"),
    [
        ("qwen3:8b", "high", True),
        ("deepseek-r1", "low", True),
        ("qwen3:8b", "none", False),
        ("gpt-oss:20b", "high", "high"),
        ("gpt-oss:120b", "minimal", "low"),
    ],
)
def test_reasoning_effort_to_think(
    model: str, effort: str, think: Any, client: llmrpc.Client, upstream: FakeUpstream
) -> None:
    client.completion(f"ollama_chat/{model}", USER, reasoning_effort=effort)
    assert upstream.requests[-1].json()["think"] == think


def test_thinking_with_tools_across_turns(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(
        oll.chat("", thinking="The user wants weather.", tool_calls=[("get_weather", {"city": "Oslo"})])
    )
    first = client.completion("ollama_chat/qwen3:8b", USER, tools=TOOLS, reasoning_effort="medium")
    msg = first.choices[0].message
    assert msg.reasoning_content == "The user wants weather."
    assert msg.tool_calls is not None
    upstream.enqueue(oll.chat("It is cold.", thinking="Report it."))
    history = [*USER, msg, {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "-5C"}]
    second = client.completion("ollama_chat/qwen3:8b", history, tools=TOOLS, reasoning_effort="medium")
    assert second.choices[0].message.reasoning_content == "Report it."
    sent = upstream.requests[-1].json()
    assert sent["messages"][1]["thinking"] == "The user wants weather."
    assert sent["messages"][2]["tool_name"] == "get_weather"
    assert sent["think"] is True


def test_streamed_thinking(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oll.chat_stream(["42"], thinking_pieces=["Let me ", "think."]))
    chunks = list(client.completion("ollama_chat/qwen3:8b", USER, stream=True, reasoning_effort="high"))
    reasoning = [
        c.choices[0].delta.reasoning_content
        for c in chunks
        if c.choices and c.choices[0].delta.reasoning_content
    ]
    assert reasoning == ["Let me ", "think."]
    assert chunks[0].choices[0].delta.role == "assistant"
    built = llmrpc.stream_chunk_builder(chunks)
    assert built is not None
    assert (
        built.choices[0].message.reasoning_content == "Let me think."
        and built.choices[0].message.content == "42"
    )


def test_think_tags_in_content_become_reasoning(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    # deepseek-r1 / qwen3 without "think": the reasoning arrives inline, as LiteLLM parses it.
    upstream.enqueue(oll.chat("<think>Capital of France.</think>\n\nParis."))
    msg = client.completion("ollama_chat/deepseek-r1:8b", USER).choices[0].message
    assert (msg.reasoning_content, msg.content) == ("Capital of France.", "\n\nParis.")


def test_streamed_think_tags_cut_across_lines(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oll.chat_stream(["<th", "ink>Capital", " of France.</th", "ink>\n\nPar", "is."]))
    chunks = list(client.completion("ollama_chat/deepseek-r1:8b", USER, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert [d.reasoning_content for d in deltas if d.reasoning_content] == ["Capital", " of France."]
    assert [d.content for d in deltas if d.content] == ["\n\nPar", "is."]
    assert "<" not in "".join(d.content or "" for d in deltas)
    built = llmrpc.stream_chunk_builder(chunks)
    assert built is not None
    assert built.choices[0].message.reasoning_content == "Capital of France."
    assert built.choices[0].message.content == "\n\nParis."


def test_unclosed_think_block_at_the_end_of_a_stream(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oll.chat_stream(["<think>cut off by num_predict </th"], done_reason="length"))
    built = llmrpc.stream_chunk_builder(list(client.completion("ollama_chat/qwen3:8b", USER, stream=True)))
    assert built is not None
    assert built.choices[0].message.reasoning_content == "cut off by num_predict </th"
    assert not built.choices[0].message.content
    assert built.choices[0].finish_reason == "length"


def test_a_reply_that_mentions_think_is_left_alone(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oll.chat("Put your notes in <think></think> tags."))
    msg = client.completion("ollama_chat/llama3.2", USER).choices[0].message
    assert msg.content == "Put your notes in <think></think> tags." and msg.reasoning_content is None


def test_images_from_data_urls(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    messages = [
        {"role": "developer", "content": "Be terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
    ]
    client.completion("ollama_chat/llava", messages)
    sent = upstream.requests[-1].json()["messages"]
    assert sent == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "What is this?", "images": ["iVBORw0KGgo="]},
    ]


def test_an_image_url_that_cannot_be_downloaded_is_refused(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    # Remote images are downloaded for Ollama (tests/test_media_fetch.py); .example never resolves.
    messages = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}]}
    ]
    with pytest.raises(llmrpc.BadRequestError, match=r"could not resolve x\.example"):
        client.completion("ollama_chat/llava", messages)
    assert upstream.requests == []


def test_unsupported_param_is_rejected(client: llmrpc.Client) -> None:
    with pytest.raises(llmrpc.BadRequestError, match="logit_bias"):
        client.completion("ollama_chat/m", USER, logit_bias={"1": 2})


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (oll.model_not_found("llama9"), llmrpc.NotFoundError),
        (oll.error(400, "invalid options"), llmrpc.BadRequestError),
        (oll.error(401, "unauthorized"), llmrpc.AuthenticationError),
        (oll.error(429, "too many requests"), llmrpc.RateLimitError),
        (oll.error(500, "llama runner process has terminated"), llmrpc.InternalServerError),
        (JSONReply(503, "server busy"), llmrpc.ServiceUnavailableError),
    ],
)
def test_error_classes(
    reply: Any, error: type[Exception], client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    upstream.enqueue(reply)
    with pytest.raises(error):
        client_for().completion("ollama_chat/llama9", USER, api_key="caller")


def test_stream_404_before_any_chunk(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oll.model_not_found("nope"))
    with pytest.raises(llmrpc.NotFoundError, match="not found"):
        list(client.completion("ollama_chat/nope", USER, stream=True))


def test_error_in_the_middle_of_a_stream(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oll.chat_stream(["a", "b", "c"], error_after=2))
    seen: list[str] = []
    with pytest.raises(llmrpc.APIError, match="error was encountered"):
        for c in client.completion("ollama_chat/m", USER, stream=True):
            seen.append(c.choices[0].delta.content or "")
    assert seen == ["a", "b"]


def test_truncated_stream_is_an_error(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oll.chat_stream(["a"], done=False))
    with pytest.raises(llmrpc.APIError):
        list(client.completion("ollama_chat/m", USER, stream=True))


def test_error_inside_a_200_body(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(JSONReply(200, {"error": "model 'x' not found"}))
    with pytest.raises(llmrpc.NotFoundError):
        client.completion("ollama_chat/x", USER)


def test_garbage_line_mid_stream_is_bad_response(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(
        NDJSONReply(
            [{"model": "m", "message": {"role": "assistant", "content": "a"}, "done": False}, "not json"]
        )
    )
    with pytest.raises(llmrpc.APIError):
        list(client.completion("ollama_chat/m", USER, stream=True))
