"""The OpenAI-compatible family (openrouter, groq, mistral, deepseek, xai, together_ai, fireworks_ai,
perplexity, hosted_vllm, lm_studio) through the real gateway and the thin client, against a fake
OpenAI-shaped upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import llmrpc
import pytest
from llmrpc_server.providers.chat_json import usage_from_openai
from llmrpc_server.providers.compatible import adapters, family_specs
from llmrpc_server.providers.openai import OpenAISpec

from tests.support import GatewayThread
from tests.upstreams import FakeUpstream, SSEReply, dumps
from tests.upstreams import openai as oai

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
            "strict": True,
        },
    }
]
SPECS = {spec.name: spec for spec in family_specs()}
StartGateway = Callable[..., GatewayThread]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oai.default_handler) as up:
        yield up


def env_for(name: str, url: str, key: str | None = "sk-test") -> dict[str, str]:
    spec = SPECS[name]
    env = {spec.env_bases[0]: url}
    if key is not None:
        env[spec.env_keys[0]] = key
    return env


@pytest.fixture
def client_for(start_gateway: StartGateway, upstream: FakeUpstream) -> Iterator[Callable[..., llmrpc.Client]]:
    """``client_for("groq")``: a thin client on a gateway whose ``groq`` points at the fake upstream."""
    clients: list[llmrpc.Client] = []

    def make(*names: str, **extra_env: str) -> llmrpc.Client:
        env: dict[str, str] = {}
        for name in names:
            env |= env_for(name, upstream.url)
        client = llmrpc.Client(start_gateway(env=env | extra_env).address)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def sse(*chunks: dict[str, Any] | str) -> SSEReply:
    """An SSE reply from raw chunk objects (str entries are sent as-is, e.g. comment lines)."""
    return SSEReply([c if isinstance(c, str) else "data: " + dumps(c) for c in chunks])


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **top: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "choices": choices,
        **top,
    }


# ---- the table -------------------------------------------------------------------------------------


EXPECTED_TABLE = {
    "openrouter": ("https://openrouter.ai/api/v1", ("OPENROUTER_API_KEY", "OR_API_KEY"), True),
    "groq": ("https://api.groq.com/openai/v1", ("GROQ_API_KEY",), True),
    "mistral": ("https://api.mistral.ai/v1", ("MISTRAL_AZURE_API_KEY", "MISTRAL_API_KEY"), True),
    "deepseek": ("https://api.deepseek.com/beta", ("DEEPSEEK_API_KEY",), True),
    "xai": ("https://api.x.ai/v1", ("XAI_API_KEY",), True),
    "together_ai": (
        "https://api.together.xyz/v1",
        ("TOGETHER_API_KEY", "TOGETHER_AI_API_KEY", "TOGETHERAI_API_KEY", "TOGETHER_AI_TOKEN"),
        True,
    ),
    "fireworks_ai": (
        "https://api.fireworks.ai/inference/v1",
        ("FIREWORKS_API_KEY", "FIREWORKS_AI_API_KEY", "FIREWORKSAI_API_KEY", "FIREWORKS_AI_TOKEN"),
        True,
    ),
    "perplexity": ("https://api.perplexity.ai", ("PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY"), True),
    "hosted_vllm": ("", ("HOSTED_VLLM_API_KEY",), False),
    "lm_studio": ("http://localhost:1234/v1", ("LM_STUDIO_API_KEY",), False),
}


def test_table_matches_litellm() -> None:
    assert {n: (s.default_base, s.env_keys, s.key_required) for n, s in SPECS.items()} == EXPECTED_TABLE
    assert {a.name for a in adapters()} == set(EXPECTED_TABLE)


# Path the fake sees when the base is the bare fake URL (mistral appends /v1, perplexity has none).
PATHS = {"mistral": "/v1/chat/completions"}
MODELS = {"fireworks_ai": "accounts/fireworks/models/m1"}


@pytest.mark.parametrize("name", sorted(EXPECTED_TABLE))
def test_each_prefix_reaches_its_base_with_its_key(
    name: str, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    """Every key env var is set; the first in LiteLLM's order wins, sent as a Bearer header."""
    spec = SPECS[name]
    env = {spec.env_bases[0]: upstream.url} | {k: f"key-{i}" for i, k in enumerate(spec.env_keys)}
    with llmrpc.Client(start_gateway(env=env).address) as client:
        resp = client.completion(f"{name}/m1", USER)
    assert resp.choices[0].message.content == "echo: hi"
    sent = upstream.requests[-1]
    assert sent.path == PATHS.get(name, "/chat/completions")
    assert sent.headers["authorization"] == "Bearer key-0"
    assert sent.json()["model"] == MODELS.get(name, "m1")


@pytest.mark.parametrize("name", sorted(EXPECTED_TABLE))
def test_last_key_env_and_base_env_alternatives(
    name: str, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    spec = SPECS[name]
    env = {spec.env_bases[-1]: upstream.url, spec.env_keys[-1]: "last-key"}
    with llmrpc.Client(start_gateway(env=env).address) as client:
        client.completion(f"{name}/m1", USER)
    assert upstream.requests[-1].headers["authorization"] == "Bearer last-key"


@pytest.mark.parametrize("name", ["hosted_vllm", "lm_studio"])
def test_key_optional_hosts_send_no_auth(
    name: str, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    with llmrpc.Client(start_gateway(env=env_for(name, upstream.url, key=None)).address) as client:
        assert client.completion(f"{name}/m1", USER).choices[0].message.content == "echo: hi"
    assert "authorization" not in upstream.requests[-1].headers


def test_key_required_host_without_key_fails_before_calling(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    with llmrpc.Client(start_gateway(env=env_for("groq", upstream.url, key=None)).address) as client:
        with pytest.raises(llmrpc.AuthenticationError, match="GROQ_API_KEY"):
            client.completion("groq/m1", USER)
    assert upstream.requests == []


def test_hosted_vllm_needs_api_base(start_gateway: StartGateway) -> None:
    with llmrpc.Client(start_gateway().address) as client:
        with pytest.raises(llmrpc.BadRequestError, match="api_base"):
            client.completion("hosted_vllm/m1", USER)


def test_hosted_vllm_with_per_request_api_base(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    with llmrpc.Client(start_gateway().address) as client:
        resp = client.completion("hosted_vllm/m1", USER, api_base=upstream.url + "/v1", api_key="tok")
    assert resp.choices[0].message.content == "echo: hi"
    assert upstream.requests[-1].path == "/v1/chat/completions"
    assert upstream.requests[-1].headers["authorization"] == "Bearer tok"


# ---- plain, streaming, tools, errors (through a generic member) -------------------------------------


def test_plain_text_and_usage(client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream) -> None:
    usage = oai.default_usage(prompt_tokens=20, completion_tokens=4)
    usage["prompt_tokens_details"]["cached_tokens"] = 16
    upstream.enqueue(oai.chat_completion("Hello!", model="meta-llama/Llama-3-70b", usage=usage))
    resp = client_for("together_ai").completion("together_ai/meta-llama/Llama-3-70b", USER, temperature=0.2)
    assert resp.choices[0].message.content == "Hello!"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "meta-llama/Llama-3-70b"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (20, 4, 24)
    assert resp.usage.prompt_tokens_details.cached_tokens == 16
    assert resp.usage.cache_read_input_tokens == 16
    body = upstream.requests[-1].json()
    assert body == {"model": "meta-llama/Llama-3-70b", "messages": USER, "temperature": 0.2}


def test_streaming_with_usage(client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.chat_stream(["Hel", "lo", "!"], usage=oai.default_usage(3, 3)))
    stream = client_for("groq").completion(
        "groq/llama-3.3-70b", USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.usage is None][-1] == "stop"
    assert chunks[-1].choices[0].finish_reason is None
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 6
    body = upstream.requests[-1].json()
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_streaming_without_usage_has_no_usage(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    chunks = list(client_for("groq").completion("groq/m", USER, stream=True))
    assert all(getattr(c, "usage", None) is None for c in chunks)
    assert "stream_options" not in upstream.requests[-1].json()


def test_two_turn_tool_round_trip(client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream) -> None:
    client = client_for("groq")
    upstream.enqueue(oai.chat_completion(None, tool_calls=[("call_1", "get_weather", '{"city":"Oslo"}')]))
    first = client.completion(
        "groq/m", [{"role": "user", "content": "Weather in Oslo?"}], tools=TOOLS, tool_choice="auto"
    )
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert msg.tool_calls is not None and msg.tool_calls[0].function.arguments == '{"city":"Oslo"}'
    upstream.enqueue(oai.chat_completion("It is sunny."))
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        msg,
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    second = client.completion("groq/m", history, tools=TOOLS)
    assert second.choices[0].message.content == "It is sunny."
    sent = upstream.requests[-1].json()
    assert sent["messages"][1] == {
        "role": "assistant",  # groq: the null content is stripped
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            }
        ],
    }
    assert sent["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert sent["tools"][0]["function"]["strict"] is True


def test_streamed_tool_calls(client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.chat_stream([], tool_calls=[("call_9", "get_weather", ['{"city":', '"Oslo"}'])]))
    chunks = list(client_for("together_ai").completion("together_ai/m", USER, tools=TOOLS, stream=True))
    built = llmrpc.stream_chunk_builder(chunks)
    assert built is not None
    call = built.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_9",
        "get_weather",
        '{"city":"Oslo"}',
    )
    assert built.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (oai.invalid_api_key(), llmrpc.AuthenticationError),
        (oai.rate_limited(retry_after=0), llmrpc.RateLimitError),
        (oai.insufficient_quota(), llmrpc.RateLimitError),
        (oai.context_length_exceeded(), llmrpc.ContextWindowExceededError),
        (oai.content_policy(), llmrpc.ContentPolicyViolationError),
        (oai.model_not_found(), llmrpc.NotFoundError),
        (oai.error(400, "bad temperature"), llmrpc.BadRequestError),
        (oai.error(403, "forbidden"), llmrpc.PermissionDeniedError),
        (oai.error(422, "unprocessable"), llmrpc.UnprocessableEntityError),
        (oai.server_error(500), llmrpc.InternalServerError),
        (oai.server_error(503), llmrpc.ServiceUnavailableError),
    ],
)
def test_error_classes(
    reply: Any, error: type[Exception], client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    upstream.enqueue(reply)
    with pytest.raises(error):
        client_for("deepseek").completion("deepseek/deepseek-chat", USER, api_key="caller-key")


def test_error_in_the_middle_of_a_stream(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    upstream.enqueue(oai.chat_stream(["a", "b", "c"], error_after=2))
    seen: list[str] = []
    with pytest.raises(llmrpc.APIError, match="server had an error"):
        for c in client_for("xai").completion("xai/grok-3", USER, stream=True):
            seen.append(c.choices[0].delta.content or "")
    assert "".join(seen) == "ab"


def test_truncated_stream_is_an_error(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    upstream.enqueue(oai.chat_stream(["a"], done=False, include_usage=False))
    with pytest.raises(llmrpc.APIError):
        list(client_for("lm_studio").completion("lm_studio/m", USER, stream=True))


# ---- openrouter ------------------------------------------------------------------------------------


def test_openrouter_headers_body_and_reasoning(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    details = [{"type": "reasoning.text", "text": "think", "format": "anthropic-claude-v1", "index": 0}]
    upstream.enqueue(
        oai.chat_completion(
            "42",
            model="anthropic/claude-sonnet-4",
            extra_message={"reasoning": "Let me think.", "reasoning_details": details},
        )
    )
    resp = client_for("openrouter").completion(
        "openrouter/anthropic/claude-sonnet-4", USER, reasoning_effort="high"
    )
    msg = resp.choices[0].message
    assert msg.content == "42" and msg.reasoning_content == "Let me think."
    assert msg.provider_specific_fields == {"reasoning_details": details}
    sent = upstream.requests[-1]
    assert sent.headers["http-referer"] == "https://litellm.ai"
    assert sent.headers["x-title"] == "liteLLM"
    body = sent.json()
    assert body["model"] == "anthropic/claude-sonnet-4"
    assert body["usage"] == {"include": True}
    assert body["reasoning"] == {"effort": "high"} and "reasoning_effort" not in body


def test_openrouter_caller_headers_replace_attribution(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    client_for("openrouter").completion("openrouter/x/y", USER, extra_headers={"x-title": "Mine"})
    sent = upstream.requests[-1]
    assert sent.headers["x-title"] == "Mine" and sent.headers["http-referer"] == "https://litellm.ai"


def test_openrouter_attribution_headers_from_env_mapping() -> None:
    by_name = {a.name: a for a in adapters({"OR_SITE_URL": "https://me.example", "OR_APP_NAME": "MyApp"})}
    spec = by_name["openrouter"].spec
    assert isinstance(spec, OpenAISpec)
    assert dict(spec.extra_headers) == {"HTTP-Referer": "https://me.example", "X-Title": "MyApp"}


def test_openrouter_cache_control(client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream) -> None:
    messages = [
        {"role": "system", "content": "long system prompt", "cache_control": {"type": "ephemeral"}},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            ],
        },
    ]
    client_for("openrouter").completion("openrouter/anthropic/claude-sonnet-4", messages)
    sent = upstream.requests[-1].json()["messages"]
    assert sent[0] == {
        "role": "system",
        "content": [{"type": "text", "text": "long system prompt", "cache_control": {"type": "ephemeral"}}],
    }
    assert sent[1]["content"][1] == {
        "type": "text",
        "text": "b",
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }
    assert "cache_control" not in sent[1]["content"][0]


def test_openrouter_stream_reasoning_comments_and_usage(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    details = [{"type": "reasoning.text", "text": "hm", "index": 0}]
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "cost": 0.001,
        "prompt_tokens_details": {"cached_tokens": 8},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    upstream.enqueue(
        sse(
            ": OPENROUTER PROCESSING",
            chunk({"role": "assistant", "content": "", "reasoning": "hm", "reasoning_details": details}),
            ": OPENROUTER PROCESSING",
            chunk({"content": "Hi"}),
            chunk({}, "stop"),
            chunk(None, usage=usage),
            "data: [DONE]",
        )
    )
    chunks = list(
        client_for("openrouter").completion(
            "openrouter/x/y", USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.reasoning_content == "hm"
    assert chunks[0].choices[0].delta.provider_specific_fields == {"reasoning_details": details}
    built = llmrpc.stream_chunk_builder(chunks)
    assert built is not None
    assert built.choices[0].message.content == "Hi" and built.choices[0].message.reasoning_content == "hm"
    last = chunks[-1]
    assert last.usage is not None and last.usage.total_tokens == 15
    assert last.usage.prompt_tokens_details.cached_tokens == 8
    assert last.usage.completion_tokens_details.reasoning_tokens == 2
    assert last.usage.cost == 0.001 and last._hidden_params["response_cost"] == 0.001


def test_openrouter_reported_cost_is_the_call_cost(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    # What OpenRouter billed beats the price table (LiteLLM's response_cost does the same).
    usage = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100, "cost": 0.0042}
    upstream.enqueue(oai.chat_completion("42", model="openai/gpt-4o", usage=usage))
    resp = client_for("openrouter").completion("openrouter/openai/gpt-4o", USER)
    assert resp.usage.cost == 0.0042 and resp.usage.model_dump()["cost"] == 0.0042
    assert resp._hidden_params["response_cost"] == 0.0042


@pytest.mark.parametrize("cost", ["0.1", -1, True, None, float("inf")])
def test_unusable_reported_costs_are_ignored(cost: Any) -> None:
    usage = usage_from_openai({"prompt_tokens": 1, "completion_tokens": 1, "cost": cost})
    assert not usage.HasField("cost")


def test_other_providers_report_no_cost_field(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    resp = client_for("groq").completion("groq/llama-3.1-8b-instant", USER)
    assert "cost" not in resp.usage.model_dump()


def test_openrouter_mid_stream_error_code_picks_the_class(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    error = {
        "error": {"code": 429, "message": "Rate limit exceeded upstream", "metadata": {"provider_name": "X"}},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    upstream.enqueue(sse(chunk({"role": "assistant", "content": "par"}), chunk(None, **error)))
    seen: list[str] = []
    with pytest.raises(llmrpc.RateLimitError, match="Rate limit exceeded upstream"):
        for c in client_for("openrouter").completion("openrouter/x/y", USER, stream=True):
            seen.append(c.choices[0].delta.content or "")
    assert seen == ["par"]


def test_openrouter_mid_stream_error_502(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        sse(chunk({"content": "x"}), chunk(None, error={"code": 502, "message": "Provider down"}))
    )
    with pytest.raises(llmrpc.BadGatewayError, match="Provider down"):
        list(client_for("openrouter").completion("openrouter/x/y", USER, stream=True))


# ---- mistral ---------------------------------------------------------------------------------------


def test_mistral_body_quirks(client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
        {"role": "user", "content": "hi", "name": "bob"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "again"},
    ]
    client_for("mistral").completion(
        "mistral/mistral-large-latest",
        messages,
        seed=7,
        max_completion_tokens=50,
        tools=TOOLS,
        tool_choice="required",
    )
    body = upstream.requests[-1].json()
    assert upstream.requests[-1].path == "/v1/chat/completions"
    assert body["random_seed"] == 7 and "seed" not in body
    assert body["max_tokens"] == 50 and "max_completion_tokens" not in body
    assert body["tool_choice"] == "any"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "again"},
    ]


def test_mistral_named_tool_choice_becomes_any(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    client_for("mistral").completion(
        "mistral/m", USER, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    assert upstream.requests[-1].json()["tool_choice"] == "any"


def test_mistral_rejects_unsupported_params_unless_dropped(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    client = client_for("mistral")
    with pytest.raises(llmrpc.BadRequestError, match="logit_bias"):
        client.completion("mistral/m", USER, logit_bias={"1": 5})
    client.completion("mistral/m", USER, logit_bias={"1": 5}, drop_params=True)
    assert "logit_bias" not in upstream.requests[-1].json()


# ---- deepseek --------------------------------------------------------------------------------------


def test_deepseek_reasoning_with_tools_across_turns(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    client = client_for("deepseek")
    upstream.enqueue(
        oai.chat_completion(
            None,
            model="deepseek-reasoner",
            reasoning_content="Need weather.",
            tool_calls=[("call_0", "get_weather", '{"city":"Paris"}')],
        )
    )
    first = client.completion("deepseek/deepseek-reasoner", USER, tools=TOOLS)
    msg = first.choices[0].message
    assert msg.reasoning_content == "Need weather."
    upstream.enqueue(oai.chat_completion("Rainy.", model="deepseek-reasoner", reasoning_content="Answer."))
    second = client.completion(
        "deepseek/deepseek-reasoner",
        [*USER, msg, {"role": "tool", "tool_call_id": "call_0", "content": "rain"}],
        tools=TOOLS,
    )
    assert second.choices[0].message.reasoning_content == "Answer."
    sent = upstream.requests[-1].json()["messages"][1]
    assert "reasoning_content" not in sent  # DeepSeek rejects reasoning_content echoed back
    assert sent["tool_calls"][0]["id"] == "call_0"
    assert upstream.requests[-1].path == "/chat/completions"


def test_deepseek_streamed_reasoning_and_cache_usage(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 9,
        "total_tokens": 39,
        "prompt_cache_hit_tokens": 24,
        "prompt_cache_miss_tokens": 6,
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    upstream.enqueue(oai.chat_stream(["Hi"], reasoning_pieces=["Thinking", " hard"], usage=usage))
    chunks = list(
        client_for("deepseek").completion(
            "deepseek/deepseek-reasoner", USER, stream=True, stream_options={"include_usage": True}
        )
    )
    built = llmrpc.stream_chunk_builder(chunks)
    assert built is not None
    assert built.choices[0].message.reasoning_content == "Thinking hard"
    assert built.choices[0].message.content == "Hi"
    final = chunks[-1].usage
    assert final is not None
    assert final.prompt_tokens == 30 and final.prompt_tokens_details.cached_tokens == 24
    assert final.cache_read_input_tokens == 24 and final.completion_tokens_details.reasoning_tokens == 5


def test_deepseek_unary_cache_usage(client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream) -> None:
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 9,
        "total_tokens": 39,
        "prompt_cache_hit_tokens": 24,
        "prompt_cache_miss_tokens": 6,
    }
    upstream.enqueue(oai.chat_completion("ok", usage=usage))
    resp = client_for("deepseek").completion("deepseek/deepseek-chat", USER)
    assert resp.usage.prompt_tokens_details.cached_tokens == 24 and resp.usage.cache_read_input_tokens == 24


# ---- xai -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "stop_sent", "penalty_sent"),
    [
        ("grok-3", True, True),
        ("grok-3-mini", False, True),
        ("grok-4-0709", False, False),
        ("grok-code-fast-1", False, False),
    ],
)
def test_xai_drops_stop_and_penalty_per_model(
    model: str,
    stop_sent: bool,
    penalty_sent: bool,
    client_for: Callable[..., llmrpc.Client],
    upstream: FakeUpstream,
) -> None:
    client_for("xai").completion(
        f"xai/{model}",
        [{"role": "user", "content": "x", "name": "u"}],
        stop=["END"],
        frequency_penalty=0.5,
        tools=TOOLS,
        max_completion_tokens=9,
    )
    body = upstream.requests[-1].json()
    assert ("stop" in body) is stop_sent
    assert ("frequency_penalty" in body) is penalty_sent
    assert "strict" not in body["tools"][0]["function"]
    assert body["max_tokens"] == 9 and "max_completion_tokens" not in body
    assert body["messages"] == [{"role": "user", "content": "x"}]


def test_xai_empty_finish_with_tool_calls_and_reasoning_fold(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 25,
        "completion_tokens_details": {"reasoning_tokens": 10},
    }
    upstream.enqueue(
        oai.chat_completion(None, tool_calls=[("c1", "get_weather", "{}")], finish_reason="", usage=usage)
    )
    resp = client_for("xai").completion("xai/grok-4", USER, tools=TOOLS)
    assert resp.choices[0].finish_reason == "tool_calls"
    assert (resp.usage.completion_tokens, resp.usage.total_tokens) == (15, 25)


# ---- fireworks, perplexity -------------------------------------------------------------------------


def test_fireworks_model_prefix_and_quirks(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    client = client_for("fireworks_ai")
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 1}}}
    client.completion(
        "fireworks_ai/llama-v3p1-8b-instruct",
        USER,
        tools=TOOLS,
        tool_choice="required",
        max_completion_tokens=20,
        response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema}},
    )
    body = upstream.requests[-1].json()
    assert body["model"] == "accounts/fireworks/models/llama-v3p1-8b-instruct"
    assert body["tool_choice"] == "any"
    assert body["max_tokens"] == 20
    assert body["response_format"] == {"type": "json_object", "schema": schema}
    client.completion("fireworks_ai/accounts/me/models/custom", USER, top_k=40)
    body = upstream.requests[-1].json()
    assert body["model"] == "accounts/me/models/custom" and body["top_k"] == 40


def test_perplexity_citations_unary_and_stream(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    client = client_for("perplexity")
    citations = ["https://a.example", "https://b.example"]
    results = [{"title": "A", "url": "https://a.example", "date": None}]
    reply = oai.chat_completion("Answer [1].", model="sonar")
    assert isinstance(reply.body, dict)
    reply.body |= {"citations": citations, "search_results": results}
    upstream.enqueue(reply)
    resp = client.completion("perplexity/sonar", USER)
    assert resp.choices[0].message.provider_specific_fields == {
        "citations": citations,
        "search_results": results,
    }
    assert upstream.requests[-1].path == "/chat/completions"
    upstream.enqueue(
        sse(
            chunk({"role": "assistant", "content": "Ans"}, citations=citations),
            chunk({"content": "wer"}, citations=citations),
            chunk({}, "stop", citations=citations),
            "data: [DONE]",
        )
    )
    chunks = list(client.completion("perplexity/sonar", USER, stream=True))
    assert chunks[0].choices[0].delta.provider_specific_fields == {"citations": citations}
    assert all(c.choices[0].delta.provider_specific_fields is None for c in chunks[1:])


def test_perplexity_rejects_tools(client_for: Callable[..., llmrpc.Client]) -> None:
    with pytest.raises(llmrpc.BadRequestError, match="tools"):
        client_for("perplexity").completion("perplexity/sonar", USER, tools=TOOLS)
