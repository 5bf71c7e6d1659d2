"""Fallbacks end to end: which model runs next, when, and what the caller learns about it.

LiteLLM semantics: a model's retries are spent first; a context-window error takes
``context_window_fallbacks``, a content-policy refusal ``content_policy_fallbacks``, anything else
(or those errors when their list is empty) the general ``fallbacks`` (the request's, else the
server's setting for the model). A stream may fall back only before its first chunk reached the caller.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import llmrpc
import pytest
from llmrpc_server import retry
from llmrpc_server.observability import counters

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream, StallReply
from tests.upstreams import openai as oai
from tests.upstreams.server import SSEReply

MESSAGES = [{"role": "user", "content": "hello"}]
SERVER_FALLBACKS = {"openai/primary": ("openai/server-backup", "mock/last-resort")}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oai.default_handler) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream) -> Iterator[GatewayThread]:
    env = {"OPENAI_API_KEY": "sk-server-key", "OPENAI_API_BASE": upstream.url}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(retry, "INITIAL_DELAY", 0.01)
        settings = gateway_settings(env, num_retries=2, stream_idle_timeout=1.0, fallbacks=SERVER_FALLBACKS,
                                    context_window_fallbacks={"openai/tiny": ("openai/large",)})
        with GatewayThread(settings) as gw:
            yield gw


@pytest.fixture
def client(gateway: GatewayThread, upstream: FakeUpstream) -> Iterator[llmrpc.Client]:
    upstream.reset()
    with llmrpc.Client(gateway.address) as c:
        yield c


def models_sent(upstream: FakeUpstream) -> list[str]:
    return [r.json()["model"] for r in upstream.requests]


def log_of(params: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(a["model"], a["provider"], a["outcome"]) for a in params["attempt_log"]]


def test_fallback_runs_after_the_retries_are_spent(client: llmrpc.Client, upstream: FakeUpstream,
                                                   gateway: GatewayThread) -> None:
    upstream.enqueue(*[oai.server_error(503)] * 3, oai.chat_completion("from b"))
    before = gateway.counters.total(counters.FALLBACKS)
    resp = client.completion(model="openai/model-a", messages=MESSAGES, fallbacks=["openai/model-b"])
    assert resp.choices[0].message.content == "from b"
    assert models_sent(upstream) == ["model-a"] * 3 + ["model-b"]
    assert resp._hidden_params["attempts"] == 4
    assert log_of(resp._hidden_params) == [("openai/model-a", "openai", "PROVIDER_UNAVAILABLE")] * 3 + [
        ("openai/model-b", "openai", "ok")]
    assert gateway.counters.total(counters.FALLBACKS) == before + 1


def test_fallbacks_are_tried_in_order_and_may_change_provider(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.invalid_api_key(), oai.model_not_found("model-b"))
    resp = client.completion(model="openai/model-a", messages=MESSAGES,
                             fallbacks=["openai/model-b", "mock/model-c", "openai/never"])
    assert resp.choices[0].message.content.startswith("This is a mock response")
    assert models_sent(upstream) == ["model-a", "model-b"]  # client errors are not retried
    assert log_of(resp._hidden_params) == [
        ("openai/model-a", "openai", "PROVIDER_AUTH_FAILED"),
        ("openai/model-b", "openai", "MODEL_NOT_FOUND"),
        ("mock/model-c", "mock", "ok"),
    ]
    assert resp._hidden_params["custom_llm_provider"] == "mock"


def test_last_error_is_reported_with_every_attempt(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.server_error(500), oai.rate_limited(retry_after_ms=10))
    with pytest.raises(llmrpc.RateLimitError) as info:
        client.completion(model="openai/model-a", messages=MESSAGES, num_retries=0, fallbacks=["openai/model-b"])
    err = info.value
    assert err.model == "openai/model-b" and err.metadata["attempts"] == "2"
    assert err.metadata["attemptLog"] == (
        "openai/model-a (openai): PROVIDER_UNAVAILABLE; openai/model-b (openai): RATE_LIMITED")


def test_server_fallbacks_apply_per_model(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.server_error(503), oai.server_error(503))
    resp = client.completion(model="openai/primary", messages=MESSAGES, num_retries=0)
    assert models_sent(upstream) == ["primary", "server-backup"]
    assert [a[0] for a in log_of(resp._hidden_params)] == [
        "openai/primary", "openai/server-backup", "mock/last-resort"]


def test_request_fallbacks_replace_the_server_setting(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.server_error(503))
    resp = client.completion(model="openai/primary", messages=MESSAGES, num_retries=0,
                             fallbacks=["openai/mine"])
    assert models_sent(upstream) == ["primary", "mine"]
    assert resp.choices[0].message.content


def test_models_without_a_server_setting_do_not_fall_back(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.server_error(503))
    with pytest.raises(llmrpc.ServiceUnavailableError):
        client.completion(model="openai/other", messages=MESSAGES, num_retries=0)
    assert models_sent(upstream) == ["other"]


def test_context_window_error_takes_context_window_fallbacks(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.context_length_exceeded())
    resp = client.completion(model="openai/small", messages=MESSAGES, fallbacks=["openai/general"],
                             context_window_fallbacks=["openai/large"], content_policy_fallbacks=["openai/lenient"])
    assert models_sent(upstream) == ["small", "large"]  # not retried: the same request cannot fit
    assert log_of(resp._hidden_params)[0][2] == "CONTEXT_WINDOW_EXCEEDED"


def test_content_policy_error_takes_content_policy_fallbacks(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.content_policy())
    client.completion(model="openai/strict", messages=MESSAGES, fallbacks=["openai/general"],
                      context_window_fallbacks=["openai/large"], content_policy_fallbacks=["openai/lenient"])
    assert models_sent(upstream) == ["strict", "lenient"]


def test_context_window_error_without_its_list_uses_the_general_fallbacks(
    client: llmrpc.Client, upstream: FakeUpstream
) -> None:
    upstream.enqueue(oai.context_length_exceeded())
    client.completion(model="openai/small", messages=MESSAGES, fallbacks=["openai/general"])
    assert models_sent(upstream) == ["small", "general"]


def test_specific_lists_are_not_used_for_other_errors(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.server_error(503))
    with pytest.raises(llmrpc.ServiceUnavailableError) as info:
        client.completion(model="openai/small", messages=MESSAGES, num_retries=0,
                          context_window_fallbacks=["openai/large"], content_policy_fallbacks=["openai/lenient"])
    assert models_sent(upstream) == ["small"]
    assert info.value.metadata["attempts"] == "1"


def test_a_model_is_tried_once_even_if_listed_twice(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(*[oai.server_error(503)] * 2)
    with pytest.raises(llmrpc.ServiceUnavailableError):
        client.completion(model="openai/a", messages=MESSAGES, num_retries=0,
                          fallbacks=["openai/a", "openai/b", "openai/b"])
    assert models_sent(upstream) == ["a", "b"]


def test_no_fallback_once_the_deadline_has_passed(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(StallReply(30))
    started = time.monotonic()
    with pytest.raises(llmrpc.Timeout):
        client.completion(model="openai/slow", messages=MESSAGES, timeout=0.5, fallbacks=["openai/fast"])
    assert time.monotonic() - started < 2
    assert models_sent(upstream) == ["slow"]


# ---- streams ------------------------------------------------------------------------------------


def stream_text(client: llmrpc.Client, **kwargs: Any) -> tuple[str, list[Any]]:
    chunks = list(client.completion(messages=MESSAGES, stream=True, **kwargs))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def test_stream_falls_back_before_its_first_chunk(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.server_error(503), oai.rate_limited(retry_after_ms=10),
                     oai.chat_stream(["fall", "back"], first_delay=5.0), oai.chat_stream(["from ", "b"]))
    text, chunks = stream_text(client, model="openai/a", num_retries=2, fallbacks=["openai/b"])
    assert text == "from b"
    assert models_sent(upstream) == ["a", "a", "a", "b"]
    assert log_of(chunks[0]._hidden_params) == [
        ("openai/a", "openai", "PROVIDER_UNAVAILABLE"), ("openai/a", "openai", "RATE_LIMITED"),
        ("openai/a", "openai", "STREAM_IDLE_TIMEOUT"), ("openai/b", "openai", "ok")]


def test_stream_never_falls_back_after_its_first_chunk(client: llmrpc.Client, upstream: FakeUpstream,
                                                       gateway: GatewayThread) -> None:
    partial = oai.chat_stream(["one ", "two ", "three"], error_after=2).events[:-1]
    upstream.enqueue(SSEReply(partial, headers=oai.response_headers(), then="reset"))
    before = gateway.counters.total(counters.STREAMS_BROKEN)
    got: list[str] = []
    with pytest.raises(llmrpc.APIConnectionError) as info:
        for chunk in client.completion(model="openai/a", messages=MESSAGES, stream=True, num_retries=2,
                                       fallbacks=["openai/b"]):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(got) == "one two "
    assert models_sent(upstream) == ["a"]  # neither retried nor fallen back: output was already sent
    assert info.value.metadata["attempts"] == "1"
    assert gateway.counters.total(counters.STREAMS_BROKEN) == before + 1


def test_server_context_window_fallbacks_apply_per_model(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.context_length_exceeded(), oai.chat_completion("from large"))
    resp = client.completion(model="openai/tiny", messages=MESSAGES)
    assert resp.choices[0].message.content == "from large"
    assert models_sent(upstream) == ["tiny", "large"]
    assert log_of(resp._hidden_params) == [("openai/tiny", "openai", "CONTEXT_WINDOW_EXCEEDED"),
                                           ("openai/large", "openai", "ok")]
