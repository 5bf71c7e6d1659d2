"""The Redis stores (``--redis-url``) against a real ``redis-server``: the response cache, virtual keys'
limits and spend, the router's cooldowns and usage, each shared by two "replicas" (two connection pools),
and what each does while Redis is down and after it is back. The two-process version behind Envoy is
tests/test_scale_envoy.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import llmrpc
import pytest
import yaml
from llmrpc_server.config import Settings
from llmrpc_server.keys import VirtualKey, hash_key
from llmrpc_server.keys.store import StoreUnavailable
from llmrpc_server.observability.counters import REDIS_FAILURES, Counters
from llmrpc_server.shared import RedisDeploymentState, RedisDown, RedisLimitStore, RedisLink, RedisResponseCache
from llmrpc_server.shared import link as link_module

from tests.envoy_front import wait_until
from tests.keys_support import MESSAGES, client_for, keyed_gateway
from tests.otel_support import Otel, TelemetryGateway
from tests.redis_support import RedisServer, running_redis
from tests.support import GatewayThread, free_port, gateway_settings
from tests.upstreams import FakeUpstream
from tests.upstreams import openai as oai

T0 = 1_800_000_000.0  # a minute boundary


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(autouse=True)
def empty(redis: RedisServer) -> None:
    if redis.proc is None or redis.proc.poll() is not None:
        redis.start()
    redis.cli("FLUSHALL")


@pytest.fixture
async def links(redis: RedisServer) -> AsyncIterator[list[RedisLink]]:
    """Two replicas' connection pools (fail-open)."""
    made = [RedisLink(redis.url, 0.25, False, Counters()) for _ in range(2)]
    yield made
    for link in made:
        await link.close()


def key(**limits: object) -> VirtualKey:
    return VirtualKey(digest=hash_key("sk-redis-0123456789"), alias="k", **limits)  # type: ignore[arg-type]


# ---- the response cache ---------------------------------------------------------------------------

async def test_an_entry_stored_by_one_replica_is_a_hit_on_the_other_with_a_redis_ttl(
        links: list[RedisLink], redis: RedisServer) -> None:
    a, b = (RedisResponseCache(link, 1 << 20) for link in links)
    a.put("k1", "", "response", b"payload", T0, 30.0)
    await a.flush()
    entry = await b.get("k1", T0 + 1, None)
    assert entry is not None and (entry.kind, entry.payload, entry.created) == ("response", b"payload", T0)
    assert 25_000 < int(redis.cli("PTTL", "llmrpc:cache:k1")) <= 30_000  # Redis expires it by itself
    assert await b.get("k1", T0 + 10, max_age=5.0) is None  # s-maxage: too old for this caller
    assert await b.get("k1", T0 + 31, None) is None  # past its TTL by the caller's clock too
    assert await b.get("other", T0, None) is None
    assert b.stats()["hits"] == 1 and b.stats()["misses"] == 3 and a.stats()["stores"] == 1


async def test_a_stream_entry_round_trips_and_oversized_entries_are_not_stored(links: list[RedisLink]) -> None:
    cache = RedisResponseCache(links[0], 100)
    cache.put("s", "ns", "stream", bytes(range(256))[:100], T0, 60.0)
    cache.put("big", "ns", "response", b"x" * 101, T0, 60.0)
    cache.put("no-ttl", "ns", "response", b"x", T0, 0.0)
    await cache.flush()
    entry = await cache.get("s", T0, None)
    assert entry is not None and entry.kind == "stream" and entry.payload == bytes(range(100))
    assert await cache.get("big", T0, None) is None and await cache.get("no-ttl", T0, None) is None


async def test_redis_down_is_a_miss_counted_and_logged_once_and_the_cache_recovers_by_itself(
        links: list[RedisLink], redis: RedisServer, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_module, "RETRY_AFTER", 0.2)
    cache = RedisResponseCache(links[0], 1 << 20)
    cache.put("k", "", "response", b"v", T0, 60.0)
    await cache.flush()
    redis.kill()
    with caplog.at_level(logging.WARNING, "llmrpc_server.redis"):
        assert await cache.get("k", T0, None) is None
        assert await cache.get("k", T0, None) is None  # circuit open: Redis not even asked
        cache.put("k2", "", "response", b"v", T0, 60.0)
        await cache.flush()
    assert links[0].counters.by_reason(REDIS_FAILURES) == {"cache": 3}  # each operation that missed Redis
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unavailable for the cache" in warnings[0], warnings
    assert cache.stats()["errors"] == 3 and cache.stats()["misses"] == 2
    redis.start()  # empty again: no persistence
    await asyncio.sleep(0.25)  # the circuit's retry interval (patched to 0.2 s)
    cache.put("k", "", "response", b"again", T0, 60.0)
    await cache.flush()
    entry = await cache.get("k", T0, None)
    assert entry is not None and entry.payload == b"again"


# ---- virtual keys' limits -------------------------------------------------------------------------

async def test_rpm_limit_admits_exactly_the_limit_across_replicas_racing(links: list[RedisLink]) -> None:
    stores = [RedisLimitStore(link) for link in links]
    k = key(rpm_limit=5)
    decisions = await asyncio.gather(*(stores[i % 2].admit(k, T0 + 1, "", T0 + 60) for i in range(24)))
    assert sum(d.admitted for d in decisions) == 5
    refused = next(d for d in decisions if not d.admitted)
    assert refused.limit == "rpm_limit" and refused.current == 5 and refused.retry_after == pytest.approx(59)
    assert (await stores[1].admit(k, T0 + 60, "", T0 + 120)).admitted  # the next minute's window


async def test_tpm_spend_and_budget_add_up_across_replicas(links: list[RedisLink]) -> None:
    a, b = (RedisLimitStore(link) for link in links)
    k = key(tpm_limit=100, max_budget=0.5)
    assert (await a.admit(k, T0, "", T0 + 60)).admitted
    await a.record(k, T0 + 1, "", 60, 0.2)
    await b.record(k, T0 + 2, "", 50, 0.2)
    refused = await b.admit(k, T0 + 3, "", T0 + 60)
    assert not refused.admitted and refused.limit == "tpm_limit" and refused.current == 110
    assert await a.spend(k, T0 + 4) == pytest.approx(0.4)
    await asyncio.gather(*(x.record(k, T0 + 5, "", 0, 0.01) for x in (a, b) for _ in range(10)))  # none lost
    assert await b.spend(k, T0 + 5) == pytest.approx(0.6)
    over = await a.admit(k, T0 + 61, "", T0 + 120)  # a new minute: tokens are free, the budget is not
    assert not over.admitted and over.limit == "max_budget" and over.current == pytest.approx(0.6)


async def test_parallel_leases_are_shared_and_end_with_their_call_or_deadline(
        links: list[RedisLink], redis: RedisServer) -> None:
    a, b = (RedisLimitStore(link) for link in links)
    k = key(max_parallel_requests=2)
    assert (await a.admit(k, T0, "l1", T0 + 30)).admitted
    assert (await b.admit(k, T0, "l2", T0 + 5)).admitted
    busy = await a.admit(k, T0 + 1, "l3", T0 + 30)
    assert not busy.admitted and busy.limit == "max_parallel_requests" and busy.current == 2
    await a.release(k, "l1")
    assert (await b.admit(k, T0 + 2, "l4", T0 + 30)).admitted
    assert (await a.admit(k, T0 + 6, "l5", T0 + 30)).admitted  # l2's deadline passed (its replica died)
    assert int(redis.cli("EXPIRETIME", f"llmrpc:key:{k.digest}:leases")) == T0 + 30  # the latest lease's, not l2's


async def test_redis_down_fail_open_uses_this_replicas_counters_fail_closed_refuses(
        redis: RedisServer) -> None:
    open_link = RedisLink(redis.url, 0.25, False, Counters())
    closed_link = RedisLink(redis.url, 0.25, True, Counters())
    try:
        k = key(rpm_limit=2)
        opened, closed = RedisLimitStore(open_link), RedisLimitStore(closed_link)
        assert (await opened.admit(k, T0, "", T0 + 60)).admitted  # counted in Redis
        redis.kill()
        local = [await opened.admit(k, T0 + 1, "", T0 + 60) for _ in range(3)]
        assert [d.admitted for d in local] == [True, True, False]  # this replica's own window of 2
        await opened.record(k, T0 + 1, "", 10, 0.1)  # usage kept locally meanwhile
        assert await opened.spend(k, T0 + 1) == pytest.approx(0.1)
        with pytest.raises(StoreUnavailable):
            await closed.admit(k, T0 + 1, "", T0 + 60)
        # three admissions and the spend read could not use Redis (the record went straight to the local counters)
        assert open_link.counters.by_reason(REDIS_FAILURES) == {"limits": 4}
        opened.close()
    finally:
        await open_link.close()
        await closed_link.close()


# ---- the router's state ---------------------------------------------------------------------------

async def test_usage_and_cooldowns_of_one_replica_reach_the_other(links: list[RedisLink]) -> None:
    a, b = (RedisDeploymentState(link) for link in links)
    for _ in range(3):
        a.record_request("gpt#0")
    a.record_tokens("gpt#0", 40)
    b.record_request("gpt#0")
    assert a.record_failure("gpt#0") == 1
    a.cool_down("gpt#1", 30.0)
    assert b.cooldown_left("gpt#1") == 0.0 and b.usage("gpt#0").requests == 1  # not synced yet
    await a.sync()
    await b.sync()
    await a.sync()
    for state in (a, b):
        usage = state.usage("gpt#0")
        assert (usage.requests, usage.tokens, usage.failures) == (4, 40, 1)
    assert 25.0 < b.cooldown_left("gpt#1") <= 30.0
    b.cool_down("gpt#1", 5.0)  # a shorter cooldown does not shorten the shared one
    await b.sync()
    assert b.cooldown_left("gpt#1") > 25.0
    b.started("gpt#0")
    assert b.in_flight("gpt#0") == 1 and a.in_flight("gpt#0") == 0  # in flight stays per replica


async def test_router_state_falls_back_to_its_own_counts_while_redis_is_down(
        links: list[RedisLink], redis: RedisServer) -> None:
    state = RedisDeploymentState(links[0])
    state.record_request("d")
    await state.sync()
    redis.kill()
    state.record_request("d")
    with pytest.raises(RedisDown):
        await state.sync()
    assert state.usage("d").requests == 2  # shared totals of this minute plus what is not pushed yet
    assert links[0].counters.by_reason(REDIS_FAILURES) == {"router": 1}


# ---- settings -------------------------------------------------------------------------------------

def test_redis_settings_from_env_flags_and_a_litellm_config(tmp_path: Path) -> None:
    settings = Settings.load(environ={"LLMRPC_REDIS_URL": "redis://:pw@cache:6380/1",
                                      "LLMRPC_REDIS_FAILURE": "fail-closed", "LLMRPC_REDIS_TIMEOUT": "0.05"})
    assert (settings.redis_url, settings.redis_failure, settings.redis_timeout) == (
        "redis://:pw@cache:6380/1", "fail-closed", 0.05)
    assert "pw" not in repr(settings)
    config = tmp_path / "config.yaml"
    config.write_text("model_list: []\nlitellm_settings:\n  cache: true\n  cache_params:\n    type: redis\n"
                      "    host: redis.internal\n    port: 6379\n    password: 'p@ss:word'\n")
    assert Settings.load(environ={}, config_file=str(config)).redis_url == "redis://:p%40ss%3Aword@redis.internal:6379"
    config.write_text("model_list: []\nrouter_settings:\n  redis_host: 10.0.0.7\n  redis_port: 6380\n")
    assert Settings.load(environ={}, config_file=str(config)).redis_url == "redis://10.0.0.7:6380"
    with pytest.raises(ValueError, match="redis_failure"):
        Settings.load({"redis_failure": "maybe"}, environ={})
    with pytest.raises(ValueError, match="redis_url"):
        Settings.load({"redis_url": "http://cache:6379"}, environ={})


# ---- through the real server ----------------------------------------------------------------------

def test_without_redis_url_the_redis_client_is_never_imported() -> None:
    code = ("import asyncio, sys\n"
            "from llmrpc_server.app import start_gateway\n"
            "from tests.support import gateway_settings\n"
            "async def main():\n"
            "    gw = await start_gateway(gateway_settings(cache_default=True))\n"
            "    await gw.stop(0)\n"
            "asyncio.run(main())\n"
            "assert not [m for m in sys.modules if m == 'redis' or m.startswith('redis.')], 'redis imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).parent.parent)


KEYS = [{"key": "sk-limited-0123456789", "key_alias": "limited", "rpm_limit": 100},
        {"key": "sk-unlimited-0123456789", "key_alias": "open"}]


@pytest.mark.parametrize("mode", ["fail-open", "fail-closed"])
def test_an_unreachable_redis_never_fails_a_call_except_limited_keys_when_fail_closed(
        tmp_path: Path, mode: str) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: every command fails at once
    with keyed_gateway(KEYS, str(tmp_path / "state.sqlite"), redis_url=nowhere, redis_failure=mode,
                       cache_default=True) as gw:
        with client_for(gw, "sk-unlimited-0123456789") as unlimited:  # no limits: the cache only
            first = unlimited.completion(model="mock/echo", messages=MESSAGES)
            again = unlimited.completion(model="mock/echo", messages=MESSAGES)
            assert first.choices[0].message.content == again.choices[0].message.content
            assert not again._hidden_params.get("cache_hit")
        with client_for(gw, "sk-limited-0123456789") as client:
            if mode == "fail-open":
                assert client.completion(model="mock/echo", messages=MESSAGES).choices[0].message.content
            else:
                with pytest.raises(llmrpc.ServiceUnavailableError) as info:
                    client.completion(model="mock/echo", messages=MESSAGES)
                assert info.value.reason == "KEY_STORE_UNAVAILABLE" and "Redis" in str(info.value)
        failures = gw.counters.by_reason(REDIS_FAILURES)
        assert failures.get("cache", 0) >= 1 and failures.get("limits", 0) >= 1, failures


# ---- the CLI on Redis -----------------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMRPC_")}
    return subprocess.run([sys.executable, "-m", "llmrpc_server", *args], capture_output=True, text=True,
                          timeout=120, env=clean, check=False)


async def test_cache_stats_clear_and_keys_spend_read_redis(
        links: list[RedisLink], redis: RedisServer, tmp_path: Path) -> None:
    cache = RedisResponseCache(links[0], 1 << 20)
    for name in ("a", "b"):
        cache.put(name, "", "response", b"v", T0, 60.0)
    await cache.flush()
    k = VirtualKey(digest=hash_key("sk-spender-0123456789"), alias="spender", max_budget=5.0, budget_duration=86400)
    await RedisLimitStore(links[0]).record(k, T0 + 10, "", 0, 0.25)
    stats = json.loads(cli("cache", "stats", "--redis-url", redis.url).stdout)
    assert stats["entries"] == 2 and stats["maxmemory_policy"] == "allkeys-lru"
    assert stats["redis"].startswith("redis://127.0.0.1")
    assert json.loads(cli("cache", "clear", "--redis-url", redis.url).stdout) == {"cleared": 2}
    assert await cache.get("a", T0, None) is None
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"keys": [{"key": "sk-spender-0123456789", "key_alias": "spender",
                                                "max_budget": 5.0, "budget_duration": "1d"}]}))
    done = cli("keys", "spend", "--config", str(config), "--redis-url", redis.url)
    assert done.returncode == 0, done.stderr
    row = done.stdout.splitlines()[1].split()
    assert row[0] == "spender" and row[-3:-1] == ["1", "0.250000"], done.stdout
    down = cli("cache", "stats", "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert down.returncode == 1 and "Redis at redis://127.0.0.1" in down.stderr


# ---- the router through two real gateways ---------------------------------------------------------

def router_gateway(tmp_path: Path, doc: dict[str, Any], redis_url: str) -> GatewayThread:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(doc))
    settings = Settings.load(environ={}, config_file=str(path))
    return GatewayThread(replace(settings, host="127.0.0.1", port=0, grace=0.5, cache_path=":memory:",
                                 redis_url=redis_url)).start()


def routed(gw: GatewayThread) -> str:
    with llmrpc.Client(gw.address) as client:
        return str(client.completion(model="gpt", messages=MESSAGES)._hidden_params["model_id"])


def test_a_cooldown_and_deployment_usage_seen_by_one_gateway_steer_the_other(
        tmp_path: Path, redis: RedisServer) -> None:
    if time.time() % 60 > 50:  # deployment usage is per minute: start in a fresh one
        time.sleep(61 - time.time() % 60)
    with FakeUpstream(default=oai.default_handler) as a, FakeUpstream(default=oai.default_handler) as b, \
            FakeUpstream(default=oai.default_handler) as c:
        def dep(up: FakeUpstream, dep_id: str, **params: Any) -> dict[str, Any]:
            return {"model_name": "gpt", "model_info": {"id": dep_id},
                    "litellm_params": {"model": "openai/gpt-4o", "api_base": up.url, "api_key": f"sk-{dep_id}",
                                       **params}}

        a.enqueue(oai.rate_limited(retry_after=30))
        doc = {"model_list": [dep(a, "flaky", order=1), dep(b, "small", order=2, rpm=2), dep(c, "big", order=3)],
               "router_settings": {"num_retries": 1, "allowed_fails": 100}}
        one = router_gateway(tmp_path, doc, redis.url)
        two = router_gateway(tmp_path, doc, redis.url)
        try:
            assert routed(one) == "small"  # flaky's 429 (Retry-After: 30) cools it, in Redis too
            assert routed(one) == "small"  # small's rpm of 2 is now used up, counted in Redis
            router = two.gateway.shared.router if two.gateway and two.gateway.shared else None
            assert router is not None
            wait_until(lambda: router.cooldown_left("flaky") > 20 and router.usage("small").requests == 2, 10,
                       "the second gateway to see the first one's cooldown and usage")
            assert [routed(two) for _ in range(3)] == ["big"] * 3  # neither flaky nor small, from shared state
            assert (len(a.requests), len(b.requests), len(c.requests)) == (1, 2, 3)
        finally:
            one.stop()
            two.stop()


async def test_a_slow_redis_is_a_miss_within_the_timeout_not_a_stalled_call(
        links: list[RedisLink], redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_module, "RETRY_AFTER", 0.2)
    cache = RedisResponseCache(links[0], 1 << 20)
    cache.put("k", "", "response", b"v", T0, 60.0)
    await cache.flush()
    redis.cli("CLIENT", "PAUSE", "2000", "ALL")  # Redis answers nobody for 2 s
    started = time.monotonic()
    # The entry is there: a miss means the call gave up instead of waiting for Redis.
    assert await cache.get("k", T0, None) is None
    assert time.monotonic() - started < 1.9
    assert links[0].counters.by_reason(REDIS_FAILURES) == {"cache": 1}
    deadline = time.monotonic() + 15
    while await cache.get("k", T0, None) is None:  # back once the pause ends, without a restart
        assert time.monotonic() < deadline, "the cache did not recover"
        await asyncio.sleep(0.1)


def test_redis_failures_are_a_metric() -> None:
    otel = Otel()
    settings = gateway_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", cache_default=True)
    with TelemetryGateway(settings, otel.telemetry()) as gw, llmrpc.Client(gw.address) as client:
        assert client.completion(model="mock/echo", messages=MESSAGES).choices[0].message.content
    points = otel.metrics()
    failures = {a["error.type"]: p.value for a, p in points["llmrpc.resilience.events"]
                if a["llmrpc.event"] == "redis_failures"}
    assert failures.get("cache", 0) >= 1, failures
    cache = {a["llmrpc.cache.event"]: p.value for a, p in points["llmrpc.cache.events"]}
    assert cache["errors"] >= 1 and cache["misses"] == 1, cache
