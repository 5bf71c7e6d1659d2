"""LiteLLM's module-level settings on ``llmrpc``: ``drop_params``, ``num_retries``, ``api_base``,
``api_key``, ``request_timeout`` and ``set_verbose`` / ``_turn_on_debug()`` are every call's defaults;
any other LiteLLM setting warns once when assigned; ``timeout`` takes LiteLLM's forms."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import llmrpc
import pytest
from llmrpc import _settings

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream
from tests.upstreams import openai as oai
from tests.upstreams.server import StallReply

MESSAGES = [{"role": "user", "content": "Hi"}]
SETTINGS = ("drop_params", "num_retries", "api_base", "api_key", "api_version", "request_timeout", "set_verbose")


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oai.default_handler) as up:
        yield up


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayThread]:
    with GatewayThread(gateway_settings({})) as gw:  # no provider keys or bases on the gateway
        yield gw


@pytest.fixture
def client(gateway: GatewayThread, upstream: FakeUpstream) -> Iterator[llmrpc.Client]:
    upstream.reset()
    saved = {name: getattr(llmrpc, name) for name in SETTINGS}
    assigned = set(_settings._assigned)
    with llmrpc.Client(gateway.address) as c:
        yield c
    for name, value in saved.items():
        setattr(llmrpc, name, value)
    _settings._assigned.clear()
    _settings._assigned.update(assigned)


def ask(client: llmrpc.Client, upstream: FakeUpstream, **kwargs: Any) -> Any:
    params: dict[str, Any] = {"api_base": upstream.url, "api_key": "sk-call", **kwargs}
    return client.completion(model="openai/gpt-4o-mini", messages=MESSAGES,
                             **{k: v for k, v in params.items() if v is not ...})


def test_unimplemented_litellm_setting_warns_once_naming_it() -> None:
    _settings._warned.discard("modify_params")
    with pytest.warns(UserWarning, match=r"litellm\.modify_params"):
        llmrpc.modify_params = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        llmrpc.modify_params = False  # once is enough
        llmrpc.my_own_attribute = 1  # not a LiteLLM setting: a plain module attribute
        llmrpc.drop_params = False  # implemented
    del llmrpc.modify_params, llmrpc.my_own_attribute
    with pytest.raises(AttributeError, match=r"does not implement LiteLLM's litellm\.suppress_debug_info"):
        _ = llmrpc.suppress_debug_info


def test_api_base_and_api_key_defaults(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    llmrpc.api_base = upstream.url
    llmrpc.api_key = "sk-module"
    ask(client, upstream, api_base=..., api_key=...)
    assert upstream.requests[-1].headers["authorization"] == "Bearer sk-module"
    ask(client, upstream, api_base=..., api_key="sk-per-call")  # the call's own wins
    assert upstream.requests[-1].headers["authorization"] == "Bearer sk-per-call"


def test_drop_params_default(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(llmrpc.UnsupportedParamsError):  # perplexity takes no tools
        client.completion(model="perplexity/sonar", messages=MESSAGES, api_base=upstream.url, api_key="k",
                          tools=tools)
    llmrpc.drop_params = True
    client.completion(model="perplexity/sonar", messages=MESSAGES, api_base=upstream.url, api_key="k", tools=tools)
    assert "tools" not in upstream.requests[-1].json()


def test_num_retries_default(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.rate_limited(retry_after=0), oai.rate_limited(retry_after=0))
    with pytest.raises(llmrpc.RateLimitError):  # the gateway's own setting here: no retries
        ask(client, upstream)
    upstream.reset()
    llmrpc.num_retries = 2
    upstream.enqueue(oai.rate_limited(retry_after=0), oai.rate_limited(retry_after=0))
    assert ask(client, upstream).choices[0].message.content
    assert len(upstream.requests) == 3


def test_timeouts_in_litellm_forms(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    for timeout in ("10", httpx.Timeout(10), httpx.Timeout(connect=1, read=10, write=1, pool=1), 10):
        assert ask(client, upstream, timeout=timeout).choices[0].message.content
    upstream.enqueue(StallReply(seconds=30))
    with pytest.raises(llmrpc.Timeout):
        ask(client, upstream, timeout=httpx.Timeout(30, read=0.3))  # the read timeout bounds the call
    upstream.enqueue(StallReply(seconds=30))
    with pytest.raises(llmrpc.Timeout):
        ask(client, upstream, request_timeout=0.3)  # LiteLLM's other spelling
    llmrpc.request_timeout = 0.3
    upstream.enqueue(StallReply(seconds=30))
    with pytest.raises(llmrpc.Timeout):
        ask(client, upstream)
    with pytest.raises(llmrpc.BadRequestError, match="timeout"):
        ask(client, upstream, timeout="soon")


def test_set_verbose_and_turn_on_debug_log_calls_without_keys(client: llmrpc.Client, upstream: FakeUpstream,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="llmrpc")
    llmrpc.set_verbose = True
    assert logging.getLogger("llmrpc").level == logging.DEBUG
    ask(client, upstream, user="verbose-user")
    assert "llmrpc request" in caplog.text and "verbose-user" in caplog.text and "llmrpc response" in caplog.text
    assert "sk-call" not in caplog.text
    llmrpc.set_verbose = False
    assert logging.getLogger("llmrpc").level == logging.NOTSET
    llmrpc._turn_on_debug()
    assert logging.getLogger("llmrpc").level == logging.DEBUG
    llmrpc.set_verbose = False
