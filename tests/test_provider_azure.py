"""Azure OpenAI (``azure/<deployment>``) through the real gateway and the thin client, against a fake
upstream speaking Azure's variant of the OpenAI wire format."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import llmrpc
import pytest
from llmrpc_server.providers.azure import AZURE_DEFAULT_API_VERSION

from tests.support import GatewayThread
from tests.upstreams import FakeUpstream, JSONReply, SSEReply, dumps
from tests.upstreams import openai as oai

USER = [{"role": "user", "content": "hi"}]
TOOLS = [
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
]
FILTERS = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}
StartGateway = Callable[..., GatewayThread]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oai.default_handler) as up:
        yield up


@pytest.fixture
def client_for(start_gateway: StartGateway, upstream: FakeUpstream) -> Iterator[Callable[..., llmrpc.Client]]:
    clients: list[llmrpc.Client] = []

    def make(**env: str) -> llmrpc.Client:
        base = {"AZURE_API_KEY": "az-key", "AZURE_API_BASE": upstream.url}
        client = llmrpc.Client(start_gateway(env=base | env).address)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def azure_completion(content: str | None = "hi", **kw: Any) -> JSONReply:
    """An Azure reply: OpenAI's shape plus prompt_filter_results and per-choice content_filter_results."""
    reply = oai.chat_completion(content, model="gpt-4o-2024-08-06", **kw)
    assert isinstance(reply.body, dict)
    reply.body["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": FILTERS}]
    reply.body["choices"][0]["content_filter_results"] = FILTERS
    reply.headers = {"apim-request-id": "apim-1", "x-ms-region": "East US"}
    return reply


def content_filter_error(with_code: bool = True) -> JSONReply:
    inner = {
        "code": "ResponsibleAIPolicyViolation",
        "content_filter_result": FILTERS | {"violence": {"filtered": True, "severity": "high"}},
    }
    error = {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management "
        "policy. Please modify your prompt and retry.",
        "type": None,
        "param": "prompt",
        "code": "content_filter" if with_code else None,
        "status": 400,
        "innererror": inner,
    }
    if not with_code:
        error["message"] = "Your request was blocked."
    return JSONReply(400, {"error": error})


def test_plain_url_headers_and_default_version(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    upstream.enqueue(azure_completion("Hello from Azure"))
    resp = client_for().completion("azure/my-gpt4o", USER, max_tokens=10)
    assert resp.choices[0].message.content == "Hello from Azure"
    assert resp.model == "gpt-4o-2024-08-06"
    sent = upstream.requests[-1]
    assert sent.path == "/openai/deployments/my-gpt4o/chat/completions"
    assert sent.query == {"api-version": AZURE_DEFAULT_API_VERSION} == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == "az-key"
    assert "authorization" not in sent.headers
    assert sent.json() == {"model": "my-gpt4o", "messages": USER, "max_tokens": 10}


def test_api_version_from_request_then_env(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    client = client_for(AZURE_API_VERSION="2025-01-01-preview")
    client.completion("azure/d", USER)
    assert upstream.requests[-1].query["api-version"] == "2025-01-01-preview"
    client.completion("azure/d", USER, api_version="2024-06-01")
    assert upstream.requests[-1].query["api-version"] == "2024-06-01"


def test_deployment_id_overrides_the_model(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    client_for().completion("azure/gpt-4o", USER, deployment_id="prod-deployment")
    assert upstream.requests[-1].path == "/openai/deployments/prod-deployment/chat/completions"


def test_alternative_env_names_and_key_precedence(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    env = {
        "AZURE_OPENAI_ENDPOINT": upstream.url + "/",
        "AZURE_OPENAI_API_KEY": "first",
        "AZURE_API_KEY": "second",
    }
    with llmrpc.Client(start_gateway(env=env).address) as client:
        client.completion("azure/d", USER)
    sent = upstream.requests[-1]
    assert sent.headers["api-key"] == "first"
    assert sent.path == "/openai/deployments/d/chat/completions"


def test_caller_key_and_base(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    with llmrpc.Client(start_gateway().address) as client:
        client.completion(
            "azure/d", USER, api_key="caller", api_base=upstream.url, extra_headers={"x-ms-tag": "1"}
        )
    assert upstream.requests[-1].headers["api-key"] == "caller"
    assert upstream.requests[-1].headers["x-ms-tag"] == "1"


def test_missing_base_is_invalid_argument(start_gateway: StartGateway) -> None:
    with llmrpc.Client(start_gateway(env={"AZURE_API_KEY": "k"}).address) as client:
        with pytest.raises(llmrpc.BadRequestError, match="api_base"):
            client.completion("azure/d", USER)


def test_missing_key(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    with llmrpc.Client(start_gateway(env={"AZURE_API_BASE": upstream.url}).address) as client:
        with pytest.raises(llmrpc.AuthenticationError, match="AZURE_OPENAI_API_KEY or AZURE_API_KEY"):
            client.completion("azure/d", USER)


def test_streaming_with_usage_skips_the_prompt_filter_chunk(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    stream = oai.chat_stream(["Hel", "lo"], usage=oai.default_usage(4, 2), model="gpt-4o-2024-08-06")
    head = {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [],
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTERS}],
    }
    upstream.enqueue(SSEReply(["data: " + dumps(head), *stream.events]))
    chunks = list(
        client_for().completion("azure/d", USER, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-1].choices[0].finish_reason is None  # LiteLLM's usage chunk: one empty choice
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 6
    assert sum(1 for c in chunks if c.usage is not None) == 1  # only the usage chunk; the filter chunk is gone
    body = upstream.requests[-1].json()
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_two_turn_tool_round_trip(client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream) -> None:
    client = client_for()
    upstream.enqueue(azure_completion(None, tool_calls=[("call_a", "lookup", '{"q":"x"}')]))
    first = client.completion("azure/d", USER, tools=TOOLS)
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and msg.tool_calls is not None
    upstream.enqueue(azure_completion("done"))
    history = [*USER, msg, {"role": "tool", "tool_call_id": "call_a", "content": "result"}]
    assert client.completion("azure/d", history, tools=TOOLS).choices[0].message.content == "done"
    sent = upstream.requests[-1].json()["messages"]
    assert sent[1]["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}}
    ]
    assert sent[2] == {"role": "tool", "content": "result", "tool_call_id": "call_a"}


def test_null_function_call_arguments(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    reply = azure_completion(None, finish_reason="function_call")
    assert isinstance(reply.body, dict)
    reply.body["choices"][0]["message"]["function_call"] = {"name": "lookup", "arguments": None}
    upstream.enqueue(reply)
    fn = {"name": "lookup", "parameters": {"type": "object", "properties": {}}}
    resp = client_for().completion("azure/d", USER, functions=[fn])
    call = resp.choices[0].message.function_call
    assert call is not None and call.name == "lookup" and call.arguments == ""


def test_reasoning_effort_and_cache_usage(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    usage = oai.default_usage(prompt_tokens=2000, completion_tokens=300, reasoning_tokens=256)
    usage["prompt_tokens_details"]["cached_tokens"] = 1536
    upstream.enqueue(azure_completion("ok", usage=usage))
    resp = client_for().completion("azure/o3-mini", USER, reasoning_effort="low", max_completion_tokens=500)
    assert resp.usage.prompt_tokens == 2000 and resp.usage.total_tokens == 2300
    assert (
        resp.usage.prompt_tokens_details.cached_tokens == 1536 and resp.usage.cache_read_input_tokens == 1536
    )
    assert resp.usage.completion_tokens_details.reasoning_tokens == 256
    body = upstream.requests[-1].json()
    assert body["reasoning_effort"] == "low" and body["max_completion_tokens"] == 500


@pytest.mark.parametrize("with_code", [True, False])
def test_content_filter_is_content_policy(
    with_code: bool, client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    upstream.enqueue(content_filter_error(with_code))
    with pytest.raises(llmrpc.ContentPolicyViolationError):
        client_for().completion("azure/d", USER)


def test_filtered_completion_finish_reason(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    upstream.enqueue(azure_completion(None, finish_reason="content_filter"))
    resp = client_for().completion("azure/d", USER)
    assert resp.choices[0].finish_reason == "content_filter"
    assert resp.choices[0].message.content is None


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (
            oai.error(401, "Access denied due to invalid subscription key.", code="401"),
            llmrpc.AuthenticationError,
        ),
        (oai.rate_limited(retry_after=0), llmrpc.RateLimitError),
        (
            oai.error(404, "The API deployment for this resource does not exist.", code="DeploymentNotFound"),
            llmrpc.NotFoundError,
        ),
        (oai.context_length_exceeded(), llmrpc.ContextWindowExceededError),
        (oai.server_error(500), llmrpc.InternalServerError),
        (JSONReply(502, "<html>Bad Gateway</html>"), llmrpc.BadGatewayError),
    ],
)
def test_error_classes(
    reply: Any, error: type[Exception], client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    upstream.enqueue(reply)
    with pytest.raises(error):
        client_for().completion("azure/d", USER, api_key="caller")


def test_error_in_the_middle_of_a_stream(
    client_for: Callable[..., llmrpc.Client], upstream: FakeUpstream
) -> None:
    upstream.enqueue(oai.chat_stream(["one ", "two ", "three"], error_after=2))
    seen: list[str] = []
    with pytest.raises(llmrpc.APIError):
        for c in client_for().completion("azure/d", USER, stream=True):
            seen.append(c.choices[0].delta.content or "")
    assert "".join(seen) == "one two "
