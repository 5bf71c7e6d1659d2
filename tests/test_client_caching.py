"""``llmrpc.cache = Cache(...)``: LiteLLM's cache object switches the gateway's cache on for this
process's calls, with its ``ttl`` and ``namespace`` as each call's cache controls."""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator
from typing import Any

import llmrpc
import pytest
from llmrpc.caching.caching import Cache

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream
from tests.upstreams import openai as oai

_counter = itertools.count()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oai.default_handler) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream) -> Iterator[GatewayThread]:
    env = {"OPENAI_API_KEY": "sk-server", "OPENAI_API_BASE": upstream.url}
    with GatewayThread(gateway_settings(env)) as gw:
        yield gw


@pytest.fixture
def client(gateway: GatewayThread, upstream: FakeUpstream) -> Iterator[llmrpc.Client]:
    upstream.reset()
    saved = llmrpc.cache
    with llmrpc.Client(gateway.address) as c:
        yield c
    llmrpc.cache = saved


def fresh(n: int = 1) -> list[dict[str, str]]:
    """Messages no other test sent (the module's gateway keeps its cache)."""
    tag = next(_counter)
    return [{"role": "user", "content": f"question {tag}.{i}"} for i in range(n)]


def ask(client: llmrpc.Client, messages: list[dict[str, str]], **kwargs: Any) -> Any:
    return client.completion(model="openai/gpt-4o-mini", messages=messages, **kwargs)


def test_cache_takes_litellm_constructor_arguments() -> None:
    class CacheType(enum.Enum):  # LiteLLM passes LiteLLMCacheType members too
        REDIS = "redis"

    for kind in ("local", "redis", "disk", "s3", "redis-semantic", "qdrant-semantic", "gcs", CacheType.REDIS):
        Cache(type=kind)
    cache = Cache(type="redis", host="localhost", port="6379", password="secret", namespace="ns", ttl=60,
                  supported_call_types=["acompletion"], disk_cache_dir="/tmp/x", redis_flush_size=10,
                  s3_bucket_name="b", some_future_kwarg=1)
    assert (cache.type, cache.namespace, cache.ttl, cache.supported_call_types) == ("redis", "ns", 60, ["acompletion"])
    assert "secret" not in repr(cache) and "secret" not in repr(vars(cache))
    assert Cache(type="local", default_in_memory_ttl=5).ttl == 5
    with pytest.raises(ValueError, match="unknown cache type 'memcached'"):
        Cache(type="memcached")


def test_setting_cache_turns_the_gateway_cache_on_for_calls_without_caching(client: llmrpc.Client,
                                                                           upstream: FakeUpstream) -> None:
    messages = fresh()
    llmrpc.cache = None
    ask(client, messages)
    ask(client, messages)
    assert len(upstream.requests) == 2  # no Cache: the gateway's default (off) holds
    llmrpc.cache = Cache(type="disk")
    first = ask(client, messages)
    second = ask(client, messages)
    assert len(upstream.requests) == 3
    assert not first._hidden_params["cache_hit"] and second._hidden_params["cache_hit"]
    assert second.choices[0].message.content == first.choices[0].message.content


def test_caching_false_and_no_cache_opt_out(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    llmrpc.cache = Cache()
    messages = fresh()
    ask(client, messages)
    assert not ask(client, messages, caching=False)._hidden_params["cache_hit"]
    assert not ask(client, messages, cache={"no-cache": True})._hidden_params["cache_hit"]
    assert ask(client, messages)._hidden_params["cache_hit"]
    assert len(upstream.requests) == 3


def test_namespace_and_ttl_become_the_calls_cache_controls(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    messages = fresh()
    llmrpc.cache = Cache(namespace="team-a")
    ask(client, messages)
    llmrpc.cache = Cache(namespace="team-b")
    assert not ask(client, messages)._hidden_params["cache_hit"]  # another namespace, another entry
    assert ask(client, messages)._hidden_params["cache_hit"]
    assert ask(client, messages, cache={"namespace": "team-a"})._hidden_params["cache_hit"]  # the call's own wins
    assert len(upstream.requests) == 2
    llmrpc.cache = Cache(ttl=0)  # the gateway's "ttl 0 = do not store"
    other = fresh()
    ask(client, other)
    assert not ask(client, other)._hidden_params["cache_hit"]
    assert len(upstream.requests) == 4


def test_supported_call_types_mode_and_max_messages(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    llmrpc.cache = Cache(supported_call_types=["acompletion"])
    messages = fresh()
    ask(client, messages)
    assert not ask(client, messages)._hidden_params["cache_hit"]
    llmrpc.cache = Cache(mode="default_off")
    ask(client, messages)
    assert not ask(client, messages)._hidden_params["cache_hit"]
    assert ask(client, messages, cache={"use-cache": True})._hidden_params["cache_hit"] is False  # stored now
    assert ask(client, messages, cache={"use-cache": True})._hidden_params["cache_hit"]
    llmrpc.cache = Cache()  # default max_messages=4: longer conversations are neither read nor stored
    long = fresh(5)
    ask(client, long)
    assert not ask(client, long)._hidden_params["cache_hit"]
    assert len(upstream.requests) == 7


async def test_acompletion_uses_the_cache_too(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    llmrpc.cache = Cache()
    messages = fresh()
    await client.acompletion(model="openai/gpt-4o-mini", messages=messages)
    again = await client.acompletion(model="openai/gpt-4o-mini", messages=messages)
    assert again._hidden_params["cache_hit"] and len(upstream.requests) == 1


def test_enable_update_disable_cache(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    llmrpc.cache = None
    llmrpc.enable_cache(type="redis", host="localhost", namespace="via-enable")
    first = llmrpc.cache
    assert isinstance(first, Cache) and first.namespace == "via-enable"
    llmrpc.enable_cache(type="disk")  # already enabled: kept, as in LiteLLM
    assert llmrpc.cache is first
    messages = fresh()
    ask(client, messages)
    assert ask(client, messages)._hidden_params["cache_hit"]
    llmrpc.update_cache(type="local", namespace="other")
    assert llmrpc.cache is not first and not ask(client, messages)._hidden_params["cache_hit"]
    llmrpc.disable_cache()
    assert llmrpc.cache is None and not ask(client, messages)._hidden_params["cache_hit"]
    assert len(upstream.requests) == 3
