"""Differential harness: LiteLLM 1.108.7 and llmrpc make the same call against the same fake upstream.

LiteLLM is pointed at the fake with ``api_base``; llmrpc goes through a real gateway whose provider
bases are the fakes. Each side's answer and the request the fake received are kept, so a test compares
what callers get and what the provider got."""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the price map
with warnings.catch_warnings():  # LiteLLM's import warns about its own dependencies
    warnings.simplefilter("ignore")
    import litellm

import llmrpc

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream, RecordedRequest, anthropic, gemini, ollama, openai

__all__ = ["FAMILIES", "Family", "Parity", "close_litellm_clients", "litellm", "parity_env", "volatile_free"]


@dataclass(frozen=True)
class Family:
    """One provider family the fakes serve: its model, the fake's handler, and LiteLLM's api_base."""

    name: str
    model: str
    handler: Callable[[RecordedRequest], Any]
    env_base: str
    env_key: str | None
    base_suffix: str = ""  # appended to the fake's URL for LiteLLM's api_base
    gateway_suffix: str = ""  # ... and for the gateway's base env var


FAMILIES = {
    "openai": Family("openai", "openai/gpt-4o", openai.default_handler, "OPENAI_API_BASE", "OPENAI_API_KEY",
                     "/v1", "/v1"),
    "anthropic": Family("anthropic", "anthropic/claude-sonnet-4-5", anthropic.default_handler,
                        "ANTHROPIC_API_BASE", "ANTHROPIC_API_KEY"),
    "gemini": Family("gemini", "gemini/gemini-2.5-flash", gemini.default_handler, "GEMINI_API_BASE",
                     "GEMINI_API_KEY", "/v1beta"),
    "ollama": Family("ollama", "ollama_chat/llama3", ollama.default_handler, "OLLAMA_API_BASE", None),
}


class Parity:
    """One family's fake upstream, shared by LiteLLM and the gateway."""

    def __init__(self, family: Family, upstream: FakeUpstream, client: llmrpc.Client) -> None:
        self.family, self.upstream, self.client = family, upstream, client

    @property
    def base(self) -> str:
        return self.upstream.url + self.family.base_suffix

    def litellm(self, **kwargs: Any) -> tuple[Any, RecordedRequest | None]:
        """``litellm.completion`` against the fake; the answer (or exception) and the request sent."""
        before = len(self.upstream.requests)
        kwargs.setdefault("model", self.family.model)
        kwargs.setdefault("num_retries", 0)
        if self.family.env_key:
            kwargs.setdefault("api_key", "k")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out: Any = litellm.completion(api_base=self.base, **kwargs)
                if kwargs.get("stream"):
                    out = list(out)
            except Exception as exc:  # the exception is the answer being compared
                out = exc
        return out, self._sent(before)

    def llmrpc(self, **kwargs: Any) -> tuple[Any, RecordedRequest | None]:
        """``llmrpc.completion`` through the gateway; the answer (or exception) and the request sent."""
        before = len(self.upstream.requests)
        kwargs.setdefault("model", self.family.model)
        kwargs.setdefault("num_retries", 0)
        try:
            out: Any = self.client.completion(**kwargs)
            if kwargs.get("stream"):
                out = list(out)
        except Exception as exc:
            out = exc
        return out, self._sent(before)

    def _sent(self, before: int) -> RecordedRequest | None:
        requests = self.upstream.requests
        return requests[-1] if len(requests) > before else None


@contextmanager
def parity_env() -> Iterator[dict[str, Parity]]:
    """Every family's fake upstream and one gateway configured with all of them."""
    with ExitStack() as stack:
        ups = {n: stack.enter_context(FakeUpstream(default=f.handler)) for n, f in FAMILIES.items()}
        env: dict[str, str] = {}
        for name, family in FAMILIES.items():
            env[family.env_base] = ups[name].url + family.gateway_suffix
            if family.env_key:
                env[family.env_key] = "k"
        gateway = stack.enter_context(GatewayThread(gateway_settings(env)))
        client = stack.enter_context(llmrpc.Client(gateway.address))
        stack.callback(close_litellm_clients)
        yield {n: Parity(f, ups[n], client) for n, f in FAMILIES.items()}


def close_litellm_clients() -> None:
    """Close the HTTP clients LiteLLM cached for the fakes, so their sockets do not outlive the test."""
    cache = litellm.in_memory_llm_clients_cache
    for value in list(cache.cache_dict.values()):
        close = getattr(value, "close", None)
        if callable(close) and not asyncio.iscoroutinefunction(close):
            close()
    cache.flush_cache()


_VOLATILE_HEADERS = frozenset({"host", "content-length", "user-agent", "x-stainless-arch", "x-stainless-lang",
                               "x-stainless-os", "x-stainless-package-version", "x-stainless-runtime",
                               "x-stainless-runtime-version", "x-stainless-async", "x-stainless-retry-count",
                               "x-stainless-read-timeout", "x-stainless-raw-response", "accept",
                               "accept-encoding", "connection", "x-stainless-timeout", "anthropic-beta"})


def volatile_free(sent: RecordedRequest | None) -> dict[str, Any]:
    """What an upstream received, less what differs by client library: path, query, JSON body and the
    headers that carry meaning (auth, version, organization)."""
    assert sent is not None, "nothing reached the upstream"
    headers = {k: v for k, v in sent.headers.items() if k not in _VOLATILE_HEADERS and not k.startswith("x-stainless")}
    return {"path": sent.path, "query": dict(sent.query), "body": sent.json(), "headers": headers}
