"""The backend chain runs one way: each call's route is resolved once, by whichever layer asks first
(the response cache for its key, else the pipeline), and handed down in the call, so the cache never
calls back into the pipeline. Counted through the real server on a fake OpenAI upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import llmrpc
import pytest
from llmrpc_server.resolve import Resolver
from llmrpc_server.router import Router

from tests.support import GatewayThread
from tests.upstreams import FakeUpstream, openai

MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=openai.default_handler) as up:
        yield up


@pytest.fixture
def gateway(start_gateway: Callable[..., GatewayThread], upstream: FakeUpstream) -> GatewayThread:
    return start_gateway(env={"OPENAI_API_KEY": "sk-test", "OPENAI_API_BASE": upstream.url})


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the router resolved a model and the resolver prepared a deployment (the gateway
    runs in this process, so patching the classes counts its calls)."""
    counts = {"resolve": 0, "deployment": 0}

    def counting(cls: type, name: str) -> None:
        original = getattr(cls, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    counting(Router, "resolve")
    counting(Resolver, "deployment")
    return counts


def ask(gateway: GatewayThread, **kwargs: Any) -> Any:
    client = llmrpc.Client(gateway.address)
    return llmrpc.completion(model=MODEL, messages=MESSAGES, client=client, **kwargs)


@pytest.mark.parametrize("stream", [False, True])
def test_a_cached_call_resolves_its_route_once(gateway: GatewayThread, upstream: FakeUpstream,
                                               counted: dict[str, int], stream: bool) -> None:
    answer = ask(gateway, caching=True, stream=stream)
    if stream:
        answer = list(answer)
    assert len(upstream.requests) == 1  # a miss: the cache keyed it, then the pipeline sent it
    assert counted["resolve"] == 1


def test_an_uncached_call_resolves_its_route_once(gateway: GatewayThread, counted: dict[str, int]) -> None:
    assert ask(gateway).choices[0].message.content == "echo: hello"
    assert counted["resolve"] == 1


def test_a_cached_model_group_call_prepares_its_deployment_once(gateway: GatewayThread, upstream: FakeUpstream,
                                                                 counted: dict[str, int]) -> None:
    group = [{"model_name": "team-model", "litellm_params": {"model": MODEL, "api_base": upstream.url,
                                                             "api_key": "sk-caller"}}]
    client = llmrpc.Client(gateway.address)
    resp = llmrpc.completion(model="team-model", messages=MESSAGES, client=client, caching=True, model_list=group)
    assert resp.choices[0].message.content == "echo: hello"
    assert counted["deployment"] == 1  # the cache's key and the pipeline's attempt share it
    hit = llmrpc.completion(model="team-model", messages=MESSAGES, client=client, caching=True, model_list=group)
    assert hit._hidden_params["cache_hit"] is True
    assert len(upstream.requests) == 1


def test_a_refused_request_is_refused_once_and_not_cached(gateway: GatewayThread, upstream: FakeUpstream,
                                                          counted: dict[str, int]) -> None:
    """A route that fails to resolve (here an unsupported parameter) fails the call with the same
    error the pipeline always gave, and is not resolved a second time."""
    with pytest.raises(llmrpc.UnsupportedParamsError, match="does not support parameter 'thinking'"):
        ask(gateway, caching=True, thinking={"type": "enabled", "budget_tokens": 2048})
    assert counted["resolve"] == 1
    assert len(upstream.requests) == 0
