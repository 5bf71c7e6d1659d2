"""Provider keys live on the gateway: the "no API key" error says so and names the variable to set
there; ``llmrpc.send_local_provider_keys`` / ``LLMRPC_SEND_LOCAL_KEYS=1`` opt in to sending this
process's own key. The client's provider -> variable table matches the gateway's adapters."""

from __future__ import annotations

from collections.abc import Iterator

import llmrpc
import pytest
from llmrpc._provider_keys import PROVIDER_ENV_KEYS, provider_of
from llmrpc_server.providers import default_adapters

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream
from tests.upstreams import openai as oai

MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oai.default_handler) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream) -> Iterator[GatewayThread]:
    with GatewayThread(gateway_settings({"OPENAI_API_BASE": upstream.url})) as gw:  # a base, but no key
        yield gw


@pytest.fixture
def client(gateway: GatewayThread, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> Iterator[llmrpc.Client]:
    upstream.reset()
    monkeypatch.delenv("LLMRPC_SEND_LOCAL_KEYS", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-process-key")
    saved = llmrpc.send_local_provider_keys
    with llmrpc.Client(gateway.address) as c:
        yield c
    llmrpc.send_local_provider_keys = saved


def test_table_matches_the_gateways_adapters() -> None:
    adapters = default_adapters({})
    assert {name: tuple(adapter.env_keys) for name, adapter in adapters.items()} == PROVIDER_ENV_KEYS


def test_provider_of_prefixes_and_bare_names() -> None:
    assert provider_of("openai/mistral") == "openai" and provider_of("gpt-4o-mini") == "openai"
    assert provider_of("claude-sonnet-4-5") == "anthropic" and provider_of("gemini-2.5-flash") == "gemini"
    assert provider_of("mistral-large", "mistral") == "mistral" and provider_of("unknown-model") is None


def test_missing_key_error_says_keys_live_on_the_gateway(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    with pytest.raises(llmrpc.AuthenticationError) as caught:
        client.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
    message = str(caught.value)
    assert caught.value.reason == "PROVIDER_API_KEY_MISSING"
    assert "set OPENAI_API_KEY in the gateway's environment" in message and client.target in message
    assert "send_local_provider_keys" in message and "sk-local-process-key" not in message
    assert upstream.requests == []


def test_opt_in_sends_this_processs_key(client: llmrpc.Client, upstream: FakeUpstream,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    llmrpc.send_local_provider_keys = True
    client.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert upstream.requests[-1].headers["authorization"] == "Bearer sk-local-process-key"
    client.completion(model="gpt-4o-mini", messages=MESSAGES, api_key="sk-explicit")  # the call's own wins
    assert upstream.requests[-1].headers["authorization"] == "Bearer sk-explicit"
    llmrpc.send_local_provider_keys = None  # unset: the environment decides
    monkeypatch.setenv("LLMRPC_SEND_LOCAL_KEYS", "1")
    client.completion(model="gpt-4o-mini", messages=MESSAGES)
    assert upstream.requests[-1].headers["authorization"] == "Bearer sk-local-process-key"
    llmrpc.send_local_provider_keys = False  # the setting wins over the environment
    with pytest.raises(llmrpc.AuthenticationError):
        client.completion(model="gpt-4o-mini", messages=MESSAGES)
    assert len(upstream.requests) == 3
