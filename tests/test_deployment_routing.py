"""Model groups end to end: several fake deployments behind one public model name, through the
real gateway and the thin client. Strategy distributions are statistical with generous bounds."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import llmrpc
import pytest
import yaml
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc
from llmrpc_server import retry
from llmrpc_server.config import Settings
from llmrpc_server.proxy_config import ConfigError

from tests.support import GatewayThread
from tests.upstreams import FakeUpstream
from tests.upstreams import openai as oai
from tests.upstreams.server import RecordedRequest, Reply

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "INITIAL_DELAY", 0.01)


@pytest.fixture
def upstreams() -> Iterator[list[FakeUpstream]]:
    ups = [FakeUpstream(default=oai.default_handler).start() for _ in range(3)]
    yield ups
    for up in ups:
        up.stop()


def deployment(name: str, up: FakeUpstream, dep_id: str, model: str = "openai/gpt-4o", **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": model, "api_base": up.url,
                                                   "api_key": f"sk-{dep_id}", **params},
            "model_info": {"id": dep_id}}


def gateway_for(tmp_path: Path, doc: dict[str, Any], **overrides: Any) -> GatewayThread:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    settings = Settings.load(environ={}, config_file=str(path))
    settings = replace(settings, host="127.0.0.1", port=0, grace=0.5, cache_path=":memory:", **overrides)
    return GatewayThread(settings).start()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., GatewayThread]]:
    started: list[GatewayThread] = []

    def run(doc: dict[str, Any], **overrides: Any) -> GatewayThread:
        gw = gateway_for(tmp_path, doc, **overrides)
        started.append(gw)
        return gw

    yield run
    for gw in started:
        gw.stop()


def deployments_of(resp: Any) -> list[str | None]:
    return [a["deployment"] for a in resp._hidden_params["attempt_log"]]


def always(reply: Callable[[], Reply]) -> Callable[[RecordedRequest], Reply]:
    return lambda _req: reply()


def test_simple_shuffle_follows_weights(start: Callable[..., GatewayThread], upstreams: list[FakeUpstream]) -> None:
    a, b, c = upstreams
    gw = start({"model_list": [deployment("gpt", a, "a", weight=6), deployment("gpt", b, "b", weight=3),
                               deployment("gpt", c, "c", weight=1)]})
    with llmrpc.Client(gw.address) as client:
        answered = Counter(client.completion(model="gpt", messages=MESSAGES)._hidden_params["model_id"]
                           for _ in range(200))
    assert sum(answered.values()) == 200
    # Expected 120 / 60 / 20; bounds are wide (each is > 4 standard deviations).
    assert 85 <= answered["a"] <= 155 and 30 <= answered["b"] <= 90 and 3 <= answered["c"] <= 45
    assert (len(a.requests), len(b.requests), len(c.requests)) == (answered["a"], answered["b"], answered["c"])
    assert {r.headers["authorization"] for r in a.requests} == {"Bearer sk-a"}  # each deployment's own key


def test_shuffle_without_weights_uses_rpm_and_spreads(start: Callable[..., GatewayThread],
                                                      upstreams: list[FakeUpstream]) -> None:
    a, b, _ = upstreams
    gw = start({"model_list": [deployment("gpt", a, "a"), deployment("gpt", b, "b")]})
    with llmrpc.Client(gw.address) as client:
        answered = Counter(client.completion(model="gpt", messages=MESSAGES)._hidden_params["model_id"]
                           for _ in range(100))
    assert 20 <= answered["a"] <= 80 and answered["a"] + answered["b"] == 100


def test_retry_goes_to_another_deployment_and_failures_cool_it_down(
        start: Callable[..., GatewayThread], upstreams: list[FakeUpstream]) -> None:
    a, b, _ = upstreams
    a.default = always(lambda: oai.server_error(500))
    gw = start({"model_list": [deployment("gpt", a, "bad"), deployment("gpt", b, "good")],
                "router_settings": {"num_retries": 1, "allowed_fails": 1, "cooldown_time": 600}})
    with llmrpc.Client(gw.address) as client:
        logs = []
        for _ in range(200):  # until the shuffle has picked "bad" twice (each pick is a coin toss)
            resp = client.completion(model="gpt", messages=MESSAGES)
            assert resp._hidden_params["model_id"] == "good"
            logs.append(deployments_of(resp))
            if len(a.requests) == 2:
                break
        # Every failed attempt on "bad" was retried at once on "good", never on "bad" again.
        assert all(log in (["good"], ["bad", "good"]) for log in logs) and ["bad", "good"] in logs
        # Two failures (more than allowed_fails=1) within the minute cooled "bad" down: no more calls.
        later = [deployments_of(client.completion(model="gpt", messages=MESSAGES)) for _ in range(20)]
    assert len(a.requests) == 2 and later == [["good"]] * 20


def test_a_cooled_deployment_comes_back_after_cooldown_time(start: Callable[..., GatewayThread],
                                                            upstreams: list[FakeUpstream]) -> None:
    a, b, _ = upstreams
    a.default = always(lambda: oai.server_error(500))
    gw = start({"model_list": [deployment("gpt", a, "flaky"), deployment("gpt", b, "steady")],
                "router_settings": {"num_retries": 1, "allowed_fails": 0, "cooldown_time": 1}})
    with llmrpc.Client(gw.address) as client:
        for _ in range(200):  # until "flaky" has been picked once: its first failure cools it
            client.completion(model="gpt", messages=MESSAGES)
            if a.requests:
                break
        assert len(a.requests) == 1
        a.default = oai.default_handler  # it recovers meanwhile
        time.sleep(1.5)
        seen = Counter(client.completion(model="gpt", messages=MESSAGES)._hidden_params["model_id"]
                       for _ in range(40))
    assert seen["flaky"] >= 5 and seen["flaky"] + seen["steady"] == 40  # back in rotation


def test_429_retry_after_cools_the_deployment_for_that_long(
        start: Callable[..., GatewayThread], upstreams: list[FakeUpstream]) -> None:
    a, b, _ = upstreams
    a.enqueue(oai.rate_limited(retry_after=30))
    gw = start({"model_list": [deployment("gpt", a, "limited", order=1), deployment("gpt", b, "other", order=2)],
                "router_settings": {"num_retries": 1, "allowed_fails": 100}})
    with llmrpc.Client(gw.address) as client:
        first = client.completion(model="gpt", messages=MESSAGES)
        later = [client.completion(model="gpt", messages=MESSAGES)._hidden_params["model_id"] for _ in range(10)]
    # "limited" comes first (order 1); its 429 moved the call to "other" at once...
    assert deployments_of(first) == ["limited", "other"]
    assert first._hidden_params["attempt_log"][0]["outcome"] == "RATE_LIMITED"
    # ...and Retry-After: 30 keeps it out although it has the lower order (allowed_fails is far off).
    assert later == ["other"] * 10 and len(a.requests) == 1


def test_group_exhausted_falls_back_to_another_group(start: Callable[..., GatewayThread],
                                                     upstreams: list[FakeUpstream]) -> None:
    a, b, c = upstreams
    a.default = always(lambda: oai.server_error(503))
    b.default = always(lambda: oai.server_error(503))
    gw = start({"model_list": [deployment("gpt", a, "a"), deployment("gpt", b, "b"),
                               deployment("backup", c, "c", model="openai/gpt-4o-mini")],
                "router_settings": {"num_retries": 1, "fallbacks": [{"gpt": ["backup"]}]}})
    with llmrpc.Client(gw.address) as client:
        resp = client.completion(model="gpt", messages=MESSAGES)
    log = resp._hidden_params["attempt_log"]
    # Both deployments of the group first (a retry goes to the other one), then the fallback group.
    assert sorted(x["deployment"] for x in log[:2]) == ["a", "b"]
    assert [x["deployment"] for x in log[2:]] == ["c"] and log[2]["model"] == "openai/gpt-4o-mini"
    assert resp._hidden_params["model_id"] == "c"


def test_rpm_limits_each_deployment(start: Callable[..., GatewayThread], upstreams: list[FakeUpstream]) -> None:
    a, b, _ = upstreams
    if time.time() % 60 > 50:  # the counters are per minute: start in a fresh one
        time.sleep(61 - time.time() % 60)
    gw = start({"model_list": [deployment("gpt", a, "a", rpm=2), deployment("gpt", b, "b", rpm=3)],
                "router_settings": {"routing_strategy": "usage-based-routing-v2"}})
    with llmrpc.Client(gw.address) as client:
        answered = Counter(client.completion(model="gpt", messages=MESSAGES)._hidden_params["model_id"]
                           for _ in range(5))
        assert answered == {"a": 2, "b": 3}
        with pytest.raises(llmrpc.RateLimitError, match="no deployment of model group 'gpt' is available"):
            client.completion(model="gpt", messages=MESSAGES)
    assert len(a.requests) == 2 and len(b.requests) == 3


def test_order_prefers_the_lowest_until_it_is_unavailable(start: Callable[..., GatewayThread],
                                                          upstreams: list[FakeUpstream]) -> None:
    a, b, _ = upstreams
    a.default = always(lambda: oai.server_error(500))
    gw = start({"model_list": [deployment("gpt", a, "primary", order=1), deployment("gpt", b, "secondary", order=2)],
                "router_settings": {"num_retries": 1, "allowed_fails": 0, "cooldown_time": 60}})
    with llmrpc.Client(gw.address) as client:
        first = client.completion(model="gpt", messages=MESSAGES)
        second = client.completion(model="gpt", messages=MESSAGES)
    assert deployments_of(first) == ["primary", "secondary"]
    assert deployments_of(second) == ["secondary"]  # primary is cooling down


def test_wildcards_aliases_and_extras(start: Callable[..., GatewayThread], upstreams: list[FakeUpstream]) -> None:
    a, b, _ = upstreams
    gw = start({"model_list": [
        {"model_name": "openai/*", "litellm_params": {"model": "openai/*", "api_base": a.url, "api_key": "sk-w"}},
        deployment("gpt-4o", b, "exact", max_tokens=77, top_k=5),
    ], "router_settings": {"model_group_alias": {"gpt-4": "gpt-4o"}}})
    with llmrpc.Client(gw.address) as client:
        wild = client.completion(model="openai/gpt-4.1-nano", messages=MESSAGES)
        aliased = client.completion(model="gpt-4", messages=MESSAGES)
        own = client.completion(model="gpt-4o", messages=MESSAGES, max_tokens=5)
    assert a.requests[0].json()["model"] == "gpt-4.1-nano" and wild._hidden_params["model_id"] == "openai/*#0"
    assert aliased._hidden_params["model_id"] == "exact"
    sent = b.requests[0].json()
    assert sent["max_tokens"] == 77 and sent["top_k"] == 5  # a deployment's params, as LiteLLM sends them
    assert b.requests[1].json()["max_tokens"] == 5  # the caller's own value wins
    assert own.choices[0].message.content == "echo: hello"


def test_stream_retries_on_another_deployment(start: Callable[..., GatewayThread],
                                              upstreams: list[FakeUpstream]) -> None:
    a, b, _ = upstreams
    a.default = always(lambda: oai.server_error(502))
    gw = start({"model_list": [deployment("gpt", a, "a", order=1), deployment("gpt", b, "b", order=2)],
                "router_settings": {"num_retries": 1}})
    with llmrpc.Client(gw.address) as client:
        chunks = list(client.completion(model="gpt", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello"
    assert len(a.requests) == 1 and len(b.requests) == 1


def test_config_groups_refuse_caller_bases_and_keys(start: Callable[..., GatewayThread],
                                                    upstreams: list[FakeUpstream]) -> None:
    a, b, _ = upstreams
    gw = start({"model_list": [deployment("gpt", a, "a")]})
    with llmrpc.Client(gw.address) as client:
        with pytest.raises(llmrpc.BadRequestError, match="configured deployments"):
            client.completion(model="gpt", messages=MESSAGES, api_base=b.url, api_key="sk-mine")
        # Plain provider/model calls are untouched by the config.
        with pytest.raises(llmrpc.BadRequestError, match="cannot infer the provider of 'nope'"):
            client.completion(model="nope", messages=MESSAGES)
    assert not a.requests and not b.requests


def test_fallbacks_name_groups_and_unknown_ones_are_refused(start: Callable[..., GatewayThread],
                                                            upstreams: list[FakeUpstream]) -> None:
    a, _, _ = upstreams
    gw = start({"model_list": [deployment("gpt", a, "a"), deployment("backup-group", a, "z")]})
    with grpc.insecure_channel(gw.address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)
        req = pb.CompleteRequest(model="gpt", fallbacks=["backup-group", "unknown-thing"])
        req.messages.add(role="user", content="hi")
        with pytest.raises(grpc.RpcError) as info:
            stub.Complete(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "fallbacks[1]" in (info.value.details() or "")


def test_request_model_list_is_a_one_call_router(start: Callable[..., GatewayThread],
                                                 upstreams: list[FakeUpstream]) -> None:
    a, b, _ = upstreams
    a.default = always(lambda: oai.server_error(500))
    gw = start({"model_list": [deployment("unrelated", b, "u")]})
    model_list = [
        {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_base": a.url, "api_key": "sk-1"},
         "model_info": {"id": "mine-1"}},
        {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_base": b.url, "api_key": "sk-2"},
         "model_info": {"id": "mine-2"}},
    ]
    with llmrpc.Client(gw.address) as client:
        results = [client.completion(model="gpt", messages=MESSAGES, model_list=model_list, num_retries=1)
                   for _ in range(6)]
        with pytest.raises(llmrpc.BadRequestError, match=r"model_list\[0\]\.litellm_params\.rpm"):
            client.completion(model="gpt", messages=MESSAGES,
                              model_list=[{"model_name": "gpt", "litellm_params": {"model": "openai/x", "rpm": "x"}}])
    assert all(r._hidden_params["model_id"] == "mine-2" for r in results)
    assert {r.headers["authorization"] for r in b.requests} == {"Bearer sk-2"}  # the caller's own keys
    assert {r.headers["authorization"] for r in a.requests} <= {"Bearer sk-1"}


def test_without_a_config_nothing_is_routed(upstreams: list[FakeUpstream]) -> None:
    """No model_list: the pipeline holds no table and the plain provider/model path runs."""
    a = upstreams[0]
    settings = Settings(host="127.0.0.1", port=0, grace=0.5, cache_path=":memory:",
                        env={"OPENAI_API_KEY": "sk-env", "OPENAI_API_BASE": a.url})
    with GatewayThread(settings) as gw, llmrpc.Client(gw.address) as client:
        assert gw.gateway is not None and gw.gateway.reloader is not None and gw.gateway.reloader.table is None
        resp = client.completion(model="openai/gpt-4o", messages=MESSAGES)
    assert resp._hidden_params["model_id"] is None and deployments_of(resp) == [None]


def test_request_model_list_follows_the_caller_base_policy(start: Callable[..., GatewayThread],
                                                           upstreams: list[FakeUpstream]) -> None:
    a, _, _ = upstreams
    gw = start({"model_list": [deployment("unrelated", a, "u")]})
    with llmrpc.Client(gw.address) as client:
        # A base the server did not configure never gets the server's key: the caller must bring one.
        with pytest.raises(llmrpc.BadRequestError, match=r"model_list\[0\]\.litellm_params\.api_key"):
            client.completion(model="gpt", messages=MESSAGES, model_list=[
                {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_base": a.url}}])
        with pytest.raises(llmrpc.BadRequestError, match=r"model_list\[0\]\.litellm_params\.api_base"):
            client.completion(model="gpt", messages=MESSAGES, model_list=[
                {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_base": a.url + "?x=1",
                                                         "api_key": "sk-x"}}])
    assert not a.requests


def test_config_deployment_bases_are_checked_at_load(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model_list": [
        {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_base": "http://user:pw@host/v1"}}]}))
    with pytest.raises(ConfigError, match=r"model_list\[0\]\.litellm_params\.api_base"):
        Settings.load(environ={}, config_file=str(path))


def test_strategies_rank_by_their_own_measure() -> None:
    """least-busy, latency-based and usage-based ranking over a state with known counts (the
    end-to-end tests above cover the shuffle, cooldowns and limits)."""
    import random

    from llmrpc_server.deployment_state import LocalDeploymentState
    from llmrpc_server.deployments import Deployment
    from llmrpc_server.routing_strategies import choose

    deps = [Deployment(id=name, model_name="g", model="openai/x") for name in ("a", "b", "c")]
    state = LocalDeploymentState()
    rng = random.Random(7)
    for _ in range(3):
        state.started("a")
    state.started("b")
    assert {choose("least-busy", deps, state, rng).id for _ in range(20)} == {"c"}
    state.started("c")
    state.started("c")
    assert {choose("least-busy", deps, state, rng).id for _ in range(20)} == {"b"}

    latency = LocalDeploymentState()
    for dep_id, seconds in (("a", 0.5), ("b", 0.1), ("c", 0.9)):
        latency.started(dep_id)
        latency.finished(dep_id, seconds)
    assert {choose("latency-based-routing", deps, latency, rng).id for _ in range(20)} == {"b"}
    unseen = [*deps, Deployment(id="new", model_name="g", model="openai/x")]
    assert choose("latency-based-routing", unseen, latency, rng).id == "new"  # tried before it is ranked

    usage = LocalDeploymentState()
    usage.record_tokens("a", 500)
    usage.record_tokens("b", 100)
    usage.record_tokens("c", 100)
    usage.record_request("c")
    for strategy in ("usage-based-routing", "usage-based-routing-v2"):
        assert {choose(strategy, deps, usage, rng).id for _ in range(20)} == {"b"}


def test_least_busy_avoids_a_deployment_with_a_call_in_flight(start: Callable[..., GatewayThread],
                                                               upstreams: list[FakeUpstream]) -> None:
    import threading

    from tests.upstreams.server import StallReply

    a, b, _ = upstreams
    gw = start({"model_list": [deployment("gpt", a, "a"), deployment("gpt", b, "b")],
                "router_settings": {"routing_strategy": "least-busy"}})
    # Long enough that the calls below all start while it is in flight, even on a loaded machine.
    a.enqueue(StallReply(seconds=10))
    b.enqueue(StallReply(seconds=10))
    with llmrpc.Client(gw.address) as client:
        first: list[str] = []
        worker = threading.Thread(target=lambda: first.append(
            client.completion(model="gpt", messages=MESSAGES)._hidden_params["model_id"]))
        worker.start()
        assert a.wait_for(lambda: len(a.requests) + len(b.requests) == 1, timeout=30)
        busy = "a" if a.requests else "b"
        # While one call waits on `busy`, every new call goes to the other deployment.
        idle_up = b if busy == "a" else a
        idle_up.reset()
        idle_up.default = oai.default_handler
        others = {client.completion(model="gpt", messages=MESSAGES)._hidden_params["model_id"] for _ in range(5)}
        worker.join(30)
    assert others == {"b" if busy == "a" else "a"} and first == [busy]


def test_cache_params_cache_a_model_group(start: Callable[..., GatewayThread], upstreams: list[FakeUpstream]) -> None:
    a, b, _ = upstreams
    gw = start({"model_list": [deployment("gpt", a, "a"), deployment("gpt", b, "b")],
                "litellm_settings": {"cache": True, "cache_params": {"type": "local", "ttl": 60}}})
    with llmrpc.Client(gw.address) as client:
        first = client.completion(model="gpt", messages=MESSAGES)
        second = client.completion(model="gpt", messages=MESSAGES)
    assert not first._hidden_params["cache_hit"] and second._hidden_params["cache_hit"]
    assert len(a.requests) + len(b.requests) == 1


def test_request_model_list_without_a_server_config(upstreams: list[FakeUpstream]) -> None:
    a = upstreams[0]
    settings = Settings(host="127.0.0.1", port=0, grace=0.5, cache_path=":memory:")
    with GatewayThread(settings) as gw, llmrpc.Client(gw.address) as client:
        resp = client.completion(model="mine", messages=MESSAGES, model_list=[
            {"model_name": "mine", "litellm_params": {"model": "openai/gpt-4o", "api_base": a.url, "api_key": "k"}}])
    assert resp._hidden_params["model_id"] == "mine#0" and a.requests[0].headers["authorization"] == "Bearer k"


def test_attempt_spans_name_the_deployment_never_its_key(tmp_path: Path, upstreams: list[FakeUpstream]) -> None:
    from opentelemetry.trace import SpanKind

    from tests.otel_support import Otel, TelemetryGateway, of_kind

    a, b, _ = upstreams
    a.default = always(lambda: oai.server_error(500))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model_list": [deployment("gpt", a, "first", order=1),
                                                   deployment("gpt", b, "second", order=2)],
                                    "router_settings": {"num_retries": 1}}))
    settings = replace(Settings.load(environ={}, config_file=str(path)), host="127.0.0.1", port=0, grace=0.5,
                       cache_path=":memory:")
    otel = Otel()
    gw = TelemetryGateway(settings, otel.telemetry()).start()
    try:
        with llmrpc.Client(gw.address) as client:
            client.completion(model="gpt", messages=MESSAGES)
        attempts = sorted(of_kind(otel.wait_spans(), SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    finally:
        gw.stop()
    assert [dict(s.attributes or {}).get("llmrpc.deployment") for s in attempts] == ["first", "second"]
    assert not any("sk-first" in str(dict(s.attributes or {})) for s in attempts)


def test_request_model_list_bases_follow_the_egress_policy(start: Callable[..., GatewayThread],
                                                           upstreams: list[FakeUpstream]) -> None:
    a, b, _ = upstreams
    gw = start({"model_list": [deployment("configured", b, "c")]}, client_api_base="off")
    with llmrpc.Client(gw.address) as client:
        with pytest.raises(llmrpc.PermissionDeniedError, match="client-api-base off"):
            client.completion(model="gpt", messages=MESSAGES, model_list=[
                {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_base": a.url,
                                                         "api_key": "sk-x"}}])
        # The server's own deployment bases are configuration, not caller input: still served.
        assert client.completion(model="configured", messages=MESSAGES)._hidden_params["model_id"] == "c"
    assert not a.requests
