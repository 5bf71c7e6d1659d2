"""Cost in USD from genai-prices' offline table: the per-token fast path agrees with
``genai_prices.calc_price``, cached tokens are priced as cached, unknown models have no cost."""

from __future__ import annotations

import random
from collections.abc import Callable

import grpc
import pytest
from genai_prices import Usage, calc_price
from google.protobuf import json_format
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc
from llmrpc.v1 import usage_pb2
from llmrpc_server.pricing import PRICE_PROVIDERS, call_cost, cost_usd
from llmrpc_server.providers import default_adapters

from tests.support import GatewayThread

MODELS = [
    ("openai", "gpt-4o-mini"), ("openai", "gpt-4o-mini-2024-07-18"), ("anthropic", "claude-3-5-sonnet-latest"),
    ("anthropic", "claude-sonnet-4-5"), ("google", "gemini-2.5-pro"), ("groq", "llama-3.3-70b-versatile"),
    ("x-ai", "grok-3"), ("deepseek", "deepseek-chat"), ("mistral", "mistral-large-latest"), (None, "gpt-4o"),
]


def usage(prompt: int, completion: int, reads: int = 0, writes: int = 0) -> usage_pb2.Usage:
    out = usage_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    if reads:
        out.cache_read_input_tokens = reads
    if writes:
        out.cache_creation_input_tokens = writes
    return out


@pytest.mark.parametrize(("provider", "model"), MODELS)
def test_matches_genai_prices(provider: str | None, model: str) -> None:
    rng = random.Random(model)
    for _ in range(20):
        prompt = rng.randint(0, 300_000)
        reads = rng.randint(0, prompt)
        writes = rng.randint(0, prompt - reads)
        completion = rng.randint(0, 8000)
        counts = {"input_tokens": prompt, "output_tokens": completion}
        counts |= {"cache_read_tokens": reads} if reads else {}
        counts |= {"cache_write_tokens": writes} if writes else {}
        expected = float(calc_price(Usage(**counts), model, provider_id=provider).total_price)
        assert cost_usd(provider, model, usage(prompt, completion, reads, writes)) == pytest.approx(expected)


@pytest.mark.parametrize(("provider", "model"), [("google", "gemini-2.5-flash"), ("anthropic", "claude-sonnet-4-5")])
def test_web_searches_are_priced(provider: str, model: str) -> None:
    # gemini-2.5-flash takes the per-unit fast path, claude-sonnet-4-5 (tiered) calc_price itself.
    searched = usage(2000, 300)
    searched.server_tool_use.web_search_requests = 3
    expected = calc_price(Usage(input_tokens=2000, output_tokens=300, web_searches=3), model, provider_id=provider)
    assert cost_usd(provider, model, searched) == pytest.approx(float(expected.total_price))
    assert cost_usd(provider, model, searched) > (cost_usd(provider, model, usage(2000, 300)) or 0)


def test_cached_tokens_are_priced_as_cached() -> None:
    full = cost_usd("openai", "gpt-4o-mini", usage(1_000_000, 0))
    cached = cost_usd("openai", "gpt-4o-mini", usage(1_000_000, 0, reads=1_000_000))
    details = usage(1_000_000, 0)
    details.prompt_tokens_details.cached_tokens = 1_000_000  # OpenAI reports them here
    assert full == pytest.approx(0.15) and cached == pytest.approx(0.075)
    assert cost_usd("openai", "gpt-4o-mini", details) == pytest.approx(0.075)


def test_unknown_models_and_providers_have_no_cost() -> None:
    assert cost_usd("openai", "no-such-model-xyz", usage(10, 10)) is None
    meta = pb.ResponseMetadata(provider="ollama", provider_model="llama3")
    assert call_cost(meta, "llama3", usage(10, 10)) is None
    mock = pb.ResponseMetadata(provider="mock", provider_model="echo", attempt_log=[pb.Attempt(model="mock/echo")])
    assert call_cost(mock, "echo", usage(10, 10)) is None


def test_mock_calls_are_priced_as_the_model_they_name() -> None:
    meta = pb.ResponseMetadata(provider="mock", provider_model="gpt-4o-mini",
                               attempt_log=[pb.Attempt(model="openai/gpt-4o-mini")])
    assert call_cost(meta, "gpt-4o-mini", usage(1000, 1000)) == pytest.approx((1000 * 0.15 + 1000 * 0.6) / 1e6)


def test_price_table_names_only_providers_that_route() -> None:
    # A response's provider, and a model's in GetModelInfo, is always an adapter's name, and the mock's
    # requested model routed through an adapter too: an entry for any other prefix is dead.
    assert set(PRICE_PROVIDERS) <= set(default_adapters({})) - {"mock"}


def test_responses_carry_their_cost(start_gateway: Callable[..., GatewayThread]) -> None:
    gw = start_gateway()
    with grpc.insecure_channel(gw.address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)
        priced = stub.Complete(_req("openai/gpt-4o-mini"), timeout=10)
        unpriced = stub.Complete(_req("mock/echo"), timeout=10)
        stream = pb.StreamCompleteRequest(request=_req("anthropic/claude-3-5-sonnet-latest"))
        stream.stream_options.include_usage = True
        chunks = list(stub.StreamComplete(stream, timeout=10))
    u = priced.usage
    assert priced.metadata.cost_usd == pytest.approx((u.prompt_tokens * 0.15 + u.completion_tokens * 0.6) / 1e6)
    assert not unpriced.metadata.HasField("cost_usd")
    last = chunks[-1]
    assert last.HasField("usage") and last.metadata.provider == "mock"
    expected = (last.usage.prompt_tokens * 3 + last.usage.completion_tokens * 15) / 1e6
    assert last.metadata.cost_usd == pytest.approx(expected)


def _req(model: str) -> pb.CompleteRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "price me"}], "mock_response": "ok ok ok"}
    return json_format.ParseDict(body, pb.CompleteRequest())
