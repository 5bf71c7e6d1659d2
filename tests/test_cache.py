"""The response cache through the real server: LiteLLM's ``caching=True`` / ``cache={...}`` controls,
stream replay, coalescing, and failing open on a bad cache file. Upstream calls are counted on a fake
OpenAI upstream; time is moved with the backend's injectable clock, never slept through."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import llmrpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc
from llmrpc_server.accumulate import accumulate, split
from llmrpc_server.cache.backend import CachingBackend, cache_key, credential_scope
from llmrpc_server.cache.store import MEMO_SECONDS, SqliteStore
from llmrpc_server.providers.base import Target

from tests.support import GatewayThread
from tests.upstreams import FakeUpstream, StallReply, openai

MODEL = "openai/gpt-4o-mini"


class Harness:
    """One gateway in front of one fake OpenAI upstream, and a thin client for it."""

    def __init__(self, gw: GatewayThread, upstream: FakeUpstream) -> None:
        self.gw, self.upstream = gw, upstream
        self.client = llmrpc.Client(gw.address)
        self.now = time.time()
        self.caching.clock = lambda: self.now

    @property
    def caching(self) -> CachingBackend:
        assert self.gw.gateway is not None and self.gw.gateway.caching is not None
        return self.gw.gateway.caching

    @property
    def calls(self) -> int:
        return len(self.upstream.requests)

    def ask(self, text: str = "hello", **kwargs: Any) -> Any:
        kwargs.setdefault("caching", True)
        kwargs.setdefault("model", MODEL)
        return llmrpc.completion(messages=[{"role": "user", "content": text}], client=self.client, **kwargs)

    def stream(self, text: str = "hello", **kwargs: Any) -> list[Any]:
        return list(self.ask(text, stream=True, **kwargs))

    def flush(self) -> None:
        """Wait until every store submitted so far is in the file."""
        self.gw.run(self.caching.cache.flush())

    def stats(self) -> dict[str, int]:
        return self.caching.cache.stats()


def env_for(upstream: FakeUpstream) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test", "OPENAI_API_BASE": upstream.url}


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=openai.default_handler) as up:
        yield up


@pytest.fixture
def make(start_gateway: Callable[..., GatewayThread], upstream: FakeUpstream) -> Callable[..., Harness]:
    def make(**settings: Any) -> Harness:
        return Harness(start_gateway(env=env_for(upstream), **settings), upstream)

    return make


@pytest.fixture
def cache(make: Callable[..., Harness]) -> Harness:
    return make()


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ---- semantics ---------------------------------------------------------------------------------
def test_litellm_style_second_call_is_answered_from_the_cache(cache: Harness) -> None:
    first = cache.ask()
    second = cache.ask()
    assert cache.calls == 1
    assert first._hidden_params["cache_hit"] is False
    assert second._hidden_params["cache_hit"] is True
    assert second._hidden_params["attempts"] == 0
    assert second._hidden_params["response_cost"] == 0.0
    assert second._hidden_params["custom_llm_provider"] == "openai"
    # A hit reports the stored id, created and usage (LiteLLM's behaviour).
    assert (second.id, second.created, second.usage) == (first.id, first.created, first.usage)
    assert second.choices[0].message.content == first.choices[0].message.content == "echo: hello"
    assert cache.stats()["hits"] == 1 and cache.stats()["stores"] == 1


def test_caching_is_off_by_default_and_a_server_default_turns_it_on(make: Callable[..., Harness]) -> None:
    off = make()
    off.ask(caching=None)
    off.ask(caching=None)
    assert off.calls == 2
    on = make(cache_default=True)
    on.ask(caching=None)
    assert on.ask(caching=None)._hidden_params["cache_hit"] is True
    assert on.ask(caching=False)._hidden_params["cache_hit"] is False
    assert on.calls == 4


def test_no_cache_skips_the_read_but_stores_the_fresh_answer(cache: Harness) -> None:
    cache.ask()
    assert cache.ask()._hidden_params["cache_hit"] is True  # now also in the in-process memo
    cache.upstream.enqueue(openai.chat_completion("fresh"))
    fresh = cache.ask(cache={"no-cache": True})
    assert fresh._hidden_params["cache_hit"] is False
    assert cache.calls == 2
    assert cache.ask().choices[0].message.content == "fresh"
    assert cache.calls == 2


def test_no_store_does_not_store(cache: Harness) -> None:
    cache.ask(cache={"no-store": True})
    assert cache.ask()._hidden_params["cache_hit"] is False
    assert cache.calls == 2
    assert cache.ask(cache={"no-store": True})._hidden_params["cache_hit"] is True  # it may still read


def test_ttl_expires_entries_by_the_injected_clock(make: Callable[..., Harness]) -> None:
    cache = make(cache_ttl=100.0)
    cache.ask("default ttl")
    cache.ask("own ttl", cache={"ttl": 10})
    cache.now += 50
    assert cache.ask("default ttl")._hidden_params["cache_hit"] is True
    assert cache.ask("own ttl")._hidden_params["cache_hit"] is False  # 10 s entry expired: refetched
    cache.now += 51
    assert cache.ask("default ttl")._hidden_params["cache_hit"] is False
    assert cache.calls == 4


def test_ttl_zero_stores_nothing(cache: Harness) -> None:
    cache.ask(cache={"ttl": 0})
    assert cache.ask()._hidden_params["cache_hit"] is False


def test_s_maxage_accepts_only_younger_entries(cache: Harness) -> None:
    cache.ask()
    cache.now += 20
    assert cache.ask(cache={"s-maxage": 30})._hidden_params["cache_hit"] is True
    assert cache.ask(cache={"s-maxage": 10})._hidden_params["cache_hit"] is False
    assert cache.calls == 2


def test_namespaces_are_separate(cache: Harness) -> None:
    cache.ask(cache={"namespace": "a"})
    assert cache.ask(cache={"namespace": "b"})._hidden_params["cache_hit"] is False
    assert cache.ask()._hidden_params["cache_hit"] is False
    assert cache.ask(cache={"namespace": "a"})._hidden_params["cache_hit"] is True
    assert cache.calls == 3


def test_the_key_ignores_call_plumbing(cache: Harness) -> None:
    cache.ask(temperature=0.5)
    extras: list[dict[str, Any]] = [
        {"extra_headers": {"x-trace": "1"}}, {"metadata": {"run": "2"}},
        {"timeout": 30}, {"num_retries": 3}, {"fallbacks": ["openai/gpt-4o"]}, {"drop_params": True},
    ]
    for extra in extras:
        assert cache.ask(temperature=0.5, **extra)._hidden_params["cache_hit"] is True, extra
    assert cache.calls == 1


def test_the_key_covers_every_generation_parameter(cache: Harness) -> None:
    cache.ask()
    variants: list[dict[str, Any]] = [
        {"temperature": 0.1}, {"max_tokens": 5}, {"stop": ["x"]}, {"seed": 1}, {"user": "u"},
        {"response_format": {"type": "json_object"}}, {"model": "openai/gpt-4o"},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
        {"extra_body": {"top_k": 3}}, {"api_base": cache.upstream.url + "/v1", "api_key": "sk-test"},
    ]
    for n, variant in enumerate(variants, start=2):
        assert cache.ask(**variant)._hidden_params["cache_hit"] is False, variant
        assert cache.calls == n
    assert cache.ask(api_base=cache.upstream.url + "/")._hidden_params["cache_hit"] is True  # same base


def test_a_callers_own_key_only_gets_answers_that_key_produced(cache: Harness) -> None:
    assert cache.ask()._hidden_params["cache_hit"] is False  # paid for by the server's key
    cache.upstream.enqueue(openai.error(401, "Incorrect API key provided", type="invalid_request_error",
                                        code="invalid_api_key"))
    with pytest.raises(llmrpc.AuthenticationError):  # a bogus key reaches the upstream, no free answer
        cache.ask(api_key="sk-bogus-key")
    assert cache.calls == 2
    assert cache.ask(api_key="sk-caller-a")._hidden_params["cache_hit"] is False
    assert cache.upstream.requests[-1].headers["authorization"] == "Bearer sk-caller-a"
    assert cache.ask(api_key="sk-caller-a")._hidden_params["cache_hit"] is True  # its own answer
    assert cache.ask(api_key="sk-caller-b")._hidden_params["cache_hit"] is False
    assert cache.ask()._hidden_params["cache_hit"] is True  # server-key callers still share theirs
    assert cache.calls == 4


def test_the_credential_scope_covers_the_key_and_credential_headers() -> None:
    req = pb.CompleteRequest(model=MODEL, messages=[chat_pb2.Message(role="user", content="x")])
    server = Target(provider="openai", model="gpt-4o-mini", api_base="https://api.example/v1", api_key="sk-server")
    assert credential_scope(req, server) == ""
    mine = Target(provider="openai", model="gpt-4o-mini", api_base="https://api.example/v1", api_key="sk-a",
                  key_from_caller=True)
    scope = credential_scope(req, mine)
    assert len(scope) == 64 and "sk-a" not in scope
    assert cache_key(req, mine, "") != cache_key(req, server, "")
    other = Target(provider="openai", model="gpt-4o-mini", api_base="https://api.example/v1", api_key="sk-b",
                   key_from_caller=True)
    assert cache_key(req, mine, "") != cache_key(req, other, "")
    req.extra_headers["Authorization"] = "Bearer other"
    assert credential_scope(req, mine) != scope


def test_a_hit_names_only_the_upstream_origin(cache: Harness) -> None:
    first = cache.ask()
    hit = cache.ask()
    host = cache.upstream.url.split("//", 1)[1].rstrip("/")
    assert first._hidden_params["api_base"] == hit._hidden_params["api_base"] == f"http://{host}"
    assert hit._hidden_params["cache_hit"] is True


def test_the_key_is_independent_of_argument_and_json_key_order() -> None:
    target = Target(provider="openai", model="gpt-4o-mini", api_base="https://u:pw@api.example/v1",
                    api_key="sk-a")
    message = chat_pb2.Message(role="user", content="x")
    a = pb.CompleteRequest(model=MODEL, temperature=0.2, messages=[message], api_base="https://u:pw@api.example/v1")
    a.extra_body.update({"a": 1, "b": {"c": 2, "d": 3}})
    b = pb.CompleteRequest(messages=[chat_pb2.Message(content="x", role="user")], model=MODEL)
    b.extra_body.update({"b": {"d": 3, "c": 2}, "a": 1})
    b.temperature, b.api_key = 0.2, "sk-b"
    b.cache.namespace = "ignored: the namespace is passed separately"
    other_creds = Target(provider="openai", model="gpt-4o-mini", api_base="https://api.example/v1/",
                         api_key="x")
    assert cache_key(a, target, "") == cache_key(b, other_creds, "")
    assert cache_key(a, target, "") != cache_key(a, target, "ns")


def test_errors_are_never_cached(cache: Harness) -> None:
    cache.upstream.enqueue(openai.server_error())
    with pytest.raises(llmrpc.InternalServerError):
        cache.ask()
    assert cache.ask()._hidden_params["cache_hit"] is False
    assert cache.ask()._hidden_params["cache_hit"] is True
    assert cache.calls == 2


def test_an_answer_from_a_fallback_model_is_not_stored_under_the_primary(cache: Harness) -> None:
    cache.upstream.enqueue(openai.server_error())
    answer = cache.ask(fallbacks=["openai/gpt-4o"])
    assert answer._hidden_params["provider_model"] == "gpt-4o"
    assert cache.calls == 2
    assert cache.ask()._hidden_params["cache_hit"] is False
    assert cache.ask()._hidden_params["cache_hit"] is True
    assert cache.calls == 3


# ---- streams -----------------------------------------------------------------------------------
def test_a_streamed_hit_replays_the_same_chunks_with_usage(cache: Harness) -> None:
    live = cache.stream(stream_options={"include_usage": True})
    replay = cache.stream(stream_options={"include_usage": True})
    assert cache.calls == 1
    assert [c.choices[0].delta.content if c.choices else None for c in replay] == [
        c.choices[0].delta.content if c.choices else None for c in live
    ]
    assert replay[-1].usage == live[-1].usage and replay[-1].usage.total_tokens == 12
    assert {c.id for c in replay} == {live[0].id}
    assert replay[0]._hidden_params["cache_hit"] is True and live[0]._hidden_params["cache_hit"] is False
    without_usage = cache.stream()
    assert all(not getattr(c, "usage", None) for c in without_usage)
    assert text_of(without_usage) == "echo: hello"


def test_a_stream_stores_usage_even_when_its_caller_did_not_ask(cache: Harness) -> None:
    live = cache.stream()
    assert cache.upstream.requests[0].json()["stream_options"] == {"include_usage": True}
    assert all(not getattr(c, "usage", None) for c in live)
    replay = cache.stream(stream_options={"include_usage": True})
    assert replay[-1].usage.total_tokens == 12 and cache.calls == 1


def test_unary_and_stream_share_entries(cache: Harness) -> None:
    unary = cache.ask("unary first")
    chunks = cache.stream("unary first", stream_options={"include_usage": True})
    assert text_of(chunks) == unary.choices[0].message.content
    assert chunks[0]._hidden_params["cache_hit"] is True
    assert chunks[-1].usage.total_tokens == unary.usage.total_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.usage is None][-1] == "stop"
    streamed = cache.stream("stream first")
    rebuilt = cache.ask("stream first")
    assert rebuilt._hidden_params["cache_hit"] is True
    assert rebuilt.choices[0].message.content == text_of(streamed) == "echo: stream first"
    assert rebuilt.id == streamed[0].id and rebuilt.usage.total_tokens == 12
    assert cache.calls == 2


def test_a_cancelled_stream_is_not_stored(cache: Harness) -> None:
    cache.upstream.enqueue(openai.chat_stream(["a", "b", "c", "d"], delay=0.3))
    stream = cache.ask(stream=True)
    next(stream)
    stream.close()
    assert cache.upstream.wait_for(lambda: cache.upstream.disconnects == 1)
    assert text_of(cache.stream()) == "echo: hello"  # fetched again, not the cut-off stream
    assert cache.calls == 2


def test_a_failed_stream_is_not_stored(cache: Harness) -> None:
    cache.upstream.enqueue(openai.chat_stream(["a", "b"], error_after=1))
    with pytest.raises(llmrpc.APIError):
        cache.stream()
    assert cache.stream()[0]._hidden_params["cache_hit"] is False
    assert cache.stream()[0]._hidden_params["cache_hit"] is True
    assert cache.calls == 2


# ---- coalescing --------------------------------------------------------------------------------
def slow(seconds: float) -> Callable[[Any], Any]:
    return lambda req: StallReply(seconds, then=openai.default_handler(req))


async def test_identical_concurrent_requests_make_one_upstream_call(cache: Harness) -> None:
    cache.upstream.default = slow(0.3)
    answers = await asyncio.gather(*(
        llmrpc.acompletion(model=MODEL, messages=[{"role": "user", "content": "same"}], caching=True,
                           client=cache.client) for _ in range(20)))
    assert cache.calls == 1
    assert {a.choices[0].message.content for a in answers} == {"echo: same"}
    assert sum(not a._hidden_params["cache_hit"] for a in answers) == 1
    assert cache.stats()["coalesced"] == 19


async def test_concurrent_streams_coalesce_and_replay_everything(cache: Harness) -> None:
    cache.upstream.enqueue(openai.chat_stream(["one ", "two ", "three"], delay=0.1))

    async def read() -> list[Any]:
        stream = await llmrpc.acompletion(model=MODEL, messages=[{"role": "user", "content": "s"}],
                                          caching=True, stream=True, client=cache.client)
        return [chunk async for chunk in stream]

    first = asyncio.ensure_future(read())
    await asyncio.sleep(0.15)  # the late joiner still gets the chunks already sent
    results = [await first, *await asyncio.gather(*(read() for _ in range(4)))]
    assert cache.calls == 1
    assert {text_of(r) for r in results} == {"one two three"}


async def test_waiters_share_the_error_and_nothing_is_stored(cache: Harness) -> None:
    cache.upstream.enqueue(StallReply(0.3, then=openai.server_error()))
    outcomes = await asyncio.gather(*(
        llmrpc.acompletion(model=MODEL, messages=[{"role": "user", "content": "x"}], caching=True,
                           client=cache.client) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(o, llmrpc.InternalServerError) for o in outcomes)
    assert cache.calls == 1
    assert cache.ask("x")._hidden_params["cache_hit"] is False


def raw_request(text: str) -> pb.CompleteRequest:
    message = chat_pb2.Message(role="user", content=text)
    return pb.CompleteRequest(model=MODEL, messages=[message], caching=True)


async def test_cancelling_the_first_caller_does_not_fail_the_others(cache: Harness) -> None:
    cache.upstream.default = slow(0.5)
    async with grpc.aio.insecure_channel(cache.gw.address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)
        first = stub.Complete(raw_request("c"))
        while cache.calls < 1:
            await asyncio.sleep(0.01)
        second = stub.Complete(raw_request("c"))
        while cache.stats()["coalesced"] < 1:
            await asyncio.sleep(0.01)
        first.cancel()
        answer = await second
    assert answer.choices[0].message.content == "echo: c"
    assert answer.metadata.cache_hit and answer.metadata.attempts == 0
    assert cache.ask("c")._hidden_params["cache_hit"] is True
    assert cache.calls == 1


async def test_when_every_caller_leaves_the_upstream_call_is_cancelled(cache: Harness) -> None:
    # The upstream call's task is cancelled at once; its HTTP request, whose response head has not
    # arrived, ends by the call's own timeout (pyreqwest runs such a request on), well before the
    # upstream would answer.
    cache.upstream.default = slow(5)
    gone = raw_request("gone")
    gone.timeout = 1.5
    async with grpc.aio.insecure_channel(cache.gw.address) as channel:
        call = pb_grpc.CompletionServiceStub(channel).Complete(gone)
        while cache.calls < 1:
            await asyncio.sleep(0.01)
        call.cancel()
    assert cache.upstream.wait_for(lambda: cache.upstream.disconnects == 1)
    cache.upstream.default = openai.default_handler
    assert cache.ask("gone")._hidden_params["cache_hit"] is False


def test_a_follower_gives_up_at_its_own_deadline(cache: Harness) -> None:
    cache.upstream.default = slow(1.0)
    with grpc.insecure_channel(cache.gw.address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)
        leader = stub.Complete.future(raw_request("d"))
        assert cache.upstream.wait_for(lambda: cache.calls == 1)
        follower = raw_request("d")
        follower.timeout = 0.2
        with pytest.raises(grpc.RpcError) as info:
            stub.Complete(follower, timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert leader.result(timeout=5).choices[0].message.content == "echo: d"


# ---- safety ------------------------------------------------------------------------------------
def file_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_secrets_are_never_written(make: Callable[..., Harness], tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    cache = make(cache_path=str(path))
    cache.ask("remember me", api_key="sk-secret-4f1a", extra_headers={"x-tenant-token": "hdr-secret-9c2e"},
              metadata={"note": "meta-secret-77"})
    cache.stream("stream me", api_key="sk-secret-4f1a", extra_headers={"x-tenant-token": "hdr-secret-9c2e"})
    cache.flush()
    data = file_bytes(path)
    assert b"echo: remember me" in data and b"stream " in data  # the answers are there ...
    for secret in (b"sk-secret-4f1a", b"hdr-secret-9c2e", b"meta-secret-77", b"sk-test"):
        assert secret not in data  # ... the secrets are not
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_corrupt_file_degrades_to_no_cache(make: Callable[..., Harness], tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"this is not a database" * 500)
    caplog.set_level(logging.WARNING, logger="llmrpc_server.cache")
    cache = make(cache_path=str(path))
    assert cache.ask().choices[0].message.content == "echo: hello"
    assert cache.ask()._hidden_params["cache_hit"] is False
    assert cache.calls == 2
    warnings = [r for r in caplog.records if "disabled" in r.getMessage()]
    assert len(warnings) == 1
    assert path.read_bytes().startswith(b"this is not a database")  # never deleted behind the user's back


def test_an_unwritable_path_degrades_to_no_cache(make: Callable[..., Harness], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cache = make(cache_path=str(blocker / "cache.sqlite"))
    cache.ask()
    cache.stream()
    assert cache.calls == 2
    assert cache.stats()["errors"] >= 1


def test_a_locked_file_skips_the_store_without_failing(make: Callable[..., Harness], tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.sqlite"
    creator = SqliteStore(str(path), 1 << 20)
    assert creator.file_stats()["entries"] == 0  # creates the file, in WAL mode
    creator.close()
    caplog.set_level(logging.WARNING, logger="llmrpc_server.cache")
    cache = make(cache_path=str(path))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert cache.ask().choices[0].message.content == "echo: hello"
        cache.flush()  # the store waited for the lock, gave up and was skipped
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert any("locked" in r.getMessage() for r in caplog.records)
    assert cache.ask()._hidden_params["cache_hit"] is False
    assert cache.ask()._hidden_params["cache_hit"] is True
    assert cache.calls == 2


def test_the_size_bound_evicts_least_recently_used(make: Callable[..., Harness], tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    cache = make(cache_path=str(path), cache_max_mb=2000 / (1024 * 1024))
    for n in range(30):
        cache.now += 1
        cache.ask(f"question {n}")
        cache.now += 1
        assert cache.ask("question 0")._hidden_params["cache_hit"] is True  # kept warm: never evicted
    cache.flush()
    store = SqliteStore(str(path), 2000)
    stats = store.file_stats()
    store.close()
    assert 0 < stats["bytes"] <= 2000
    assert stats["evictions"] > 0 and cache.stats()["evictions"] == stats["evictions"]
    assert cache.calls == 30


def test_store_evicts_lru_and_prunes_expired(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "c.sqlite"), 250)
    store.put("a", "", "response", b"a" * 100, now=1.0, ttl=100)
    store.put("b", "", "response", b"b" * 100, now=2.0, ttl=100)
    assert store.get("a", 3.0, None) is not None  # a is now more recently used than b
    store.put("c", "", "response", b"c" * 100, now=4.0, ttl=100)
    assert store.get("b", 5.0, None) is None
    assert store.get("a", 5.0, None) is not None and store.get("c", 5.0, None) is not None
    assert store.prune(now=200.0) == {"expired": 2, "evicted": 0}
    assert store.file_stats()["entries"] == 0
    store.close()


# ---- operations --------------------------------------------------------------------------------
def cli(*args: str) -> dict[str, Any]:
    import json

    out = subprocess.run([sys.executable, "-m", "llmrpc_server", "cache", *args], capture_output=True,
                         text=True, check=True, timeout=60)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_cache_command_stats_prune_clear(make: Callable[..., Harness], tmp_path: Path) -> None:
    path = str(tmp_path / "cache.sqlite")
    cache = make(cache_path=path)
    cache.now -= 100
    cache.ask("old", cache={"ttl": 5})  # expired by the real clock the CLI uses
    cache.now += 100
    cache.ask("one", cache={"ttl": 50})
    for _ in range(3):
        cache.ask("two")  # a miss, a hit read from the file, a hit from the in-process memo
    cache.flush()
    stats = cli("stats", "--cache-path", path)
    assert stats["entries"] == 3 and stats["bytes"] > 0 and stats["file_bytes"] > 0
    assert (stats["hits"], stats["misses"], stats["stores"]) == (2, 3, 3)
    assert cli("prune", "--cache-path", path) == {"expired": 1, "evicted": 0}
    assert cli("clear", "--cache-path", path) == {"cleared": 2}
    assert cli("stats", "--cache-path", path)["entries"] == 0
    time.sleep(MEMO_SECONDS)  # another process's clear is seen once this process's memo lapses
    assert cache.ask("two")._hidden_params["cache_hit"] is False


# ---- the pure reducer --------------------------------------------------------------------------
texts = st.one_of(st.none(), st.text(max_size=20))


@st.composite
def responses(draw: st.DrawFn) -> pb.CompleteResponse:
    resp = pb.CompleteResponse(id=draw(st.text(min_size=1, max_size=8)), object="chat.completion",
                               created=draw(st.integers(0, 2**40)), model=draw(st.text(max_size=8)))
    for index in range(draw(st.integers(0, 3))):
        finish = draw(st.sampled_from(["stop", "length", "tool_calls"]))
        choice = resp.choices.add(index=index, finish_reason=finish)
        msg = choice.message
        msg.role = "assistant"
        for name in ("content", "reasoning_content", "refusal"):
            if (value := draw(texts)) is not None:
                setattr(msg, name, value)
        for n in range(draw(st.integers(0, 2))):
            msg.tool_calls.add(id=f"call_{n}", type="function", function=chat_pb2.FunctionCall(
                name=draw(st.text(min_size=1, max_size=5)), arguments=draw(st.text(max_size=10))))
    if draw(st.booleans()):
        resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens = 1, 2, 3
    if draw(st.booleans()):
        resp.service_tier = "default"
    return resp


@settings(max_examples=200, deadline=None)
@given(responses())
def test_accumulate_inverts_split(resp: pb.CompleteResponse) -> None:
    chunks = split(resp, include_usage=True)
    assert all(c.object == "chat.completion.chunk" and c.id == resp.id for c in chunks)
    assert accumulate(chunks) == resp


def test_accumulate_joins_fragments() -> None:
    def chunk(**delta: Any) -> pb.StreamCompleteResponse:
        out = pb.StreamCompleteResponse(id="c1", created=5, model="m")
        out.choices.add(index=0, delta=chat_pb2.Delta(**delta))
        return out

    def call(arguments: str, **head: Any) -> pb.StreamCompleteResponse:
        fn = chat_pb2.FunctionCallDelta(arguments=arguments, **({"name": head.pop("name")} if head else {}))
        return chunk(tool_calls=[chat_pb2.ToolCallDelta(index=0, function=fn, **head)])

    chunks = [
        chunk(role="assistant", content=""),
        chunk(content="Hel"), chunk(content="lo"),
        call("", id="t", type="function", name="f"), call('{"a"'), call(":1}"),
        chunk(thinking_blocks=[chat_pb2.ThinkingBlock(type="thinking", thinking="hm")]),
        chunk(thinking_blocks=[chat_pb2.ThinkingBlock(type="thinking", thinking="m", signature="sig")]),
    ]
    chunks[-1].choices[0].finish_reason = "tool_calls"
    resp = accumulate(chunks)
    msg = resp.choices[0].message
    assert (resp.id, resp.created, resp.model, msg.content) == ("c1", 5, "m", "Hello")
    assert (msg.tool_calls[0].id, msg.tool_calls[0].function.name, msg.tool_calls[0].function.arguments) == (
        "t", "f", '{"a":1}')
    assert [(b.thinking, b.signature) for b in msg.thinking_blocks] == [("hmm", "sig")]
    assert resp.choices[0].finish_reason == "tool_calls"
