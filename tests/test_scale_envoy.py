"""Scale-out behind a real gRPC load balancer: Envoy (deploy/envoy/envoy.yaml) in front of two gateway
processes sharing one real ``redis-server`` (``--redis-url``), each with its own fake OpenAI upstream, so
which replica served a call is seen upstream.

Through Envoy: calls spread over both replicas; a prompt cached through one replica is a hit through the
other; a key with ``rpm_limit: 5`` gets exactly 5 calls a minute across both; with Redis killed mid-run
calls keep succeeding (cache misses, a warning in the log) and once Redis is back the cache works again
without a restart; SIGTERM on one replica under steady load drains it (its health turns NOT_SERVING,
Envoy takes it out), no unary call fails and the streams in flight on it finish.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from aiohttp import web
from dockerfile_parse import DockerfileParser
from grpc_tools import protoc
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from tests.envoy_front import ROOT, Envoy, commented_transcoder, local_config, replica, run_envoy, wait_until
from tests.redis_support import RedisServer, redis_binary
from tests.support import free_port, wait_serving
from tests.upstreams import Exchange, FakeUpstream, RecordedRequest, Reply, openai

IMAGE_DRAIN_DELAY = DockerfileParser(str(ROOT)).envs["LLMRPC_DRAIN_DELAY"]  # replicas drain as the image's do
SLOW = "a slow stream"
PIECES = [f"piece{i} " for i in range(20)]
PIECE_DELAY = 0.15  # 20 pieces: a stream lasts ~3 s upstream, long enough to be in flight at SIGTERM
ADMIN = "sk-admin-scale-test"  # master_key: the existing tests call as admin (no limits)
FIVE = "sk-five-per-minute-0123"  # a virtual key with rpm_limit 5
# A cache key covers the upstream's base and credential, and each replica has its own fake OpenAI: cached
# calls use a model_list deployment both replicas share, as replicas of one deployment do.
SHARED_MODEL = "shared-gpt"


@dataclass
class CountedReply(Reply):
    """Counts the replies whose body ended cleanly (the upstream finished a stream for the gateway)."""

    inner: Reply
    done: list[int]

    async def respond(self, ex: Exchange) -> web.StreamResponse:
        resp = await self.inner.respond(ex)
        if ex.finished:
            self.done.append(1)
        return resp


@dataclass
class Upstream:
    """A replica's own fake OpenAI provider: it sees exactly the calls that replica served."""

    fake: FakeUpstream = field(default_factory=FakeUpstream)
    slow_done: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fake.default = self.handle

    def handle(self, req: RecordedRequest) -> Reply:
        if openai.last_user_text(req.json()) == SLOW:
            return CountedReply(openai.chat_stream(PIECES, delay=PIECE_DELAY), self.slow_done)
        return openai.default_handler(req)

    def calls(self, text: str | None = None) -> int:
        return sum(1 for r in list(self.fake.requests) if text is None or openai.last_user_text(r.json()) == text)


@dataclass
class Front:
    envoy: Envoy
    ports: list[int]
    procs: list[subprocess.Popen[bytes]]
    upstreams: list[Upstream]
    stub: pb_grpc.CompletionServiceStub  # calls as admin
    redis: RedisServer
    logs: list[Path]
    channel: grpc.Channel
    shared: Upstream  # the upstream of SHARED_MODEL, configured alike on both replicas

    def keyed(self, key: str) -> pb_grpc.CompletionServiceStub:
        """A stub presenting ``key`` through Envoy."""
        return pb_grpc.CompletionServiceStub(grpc.intercept_channel(self.channel, _Bearer(key)))


class _Details(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, base: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method, self.timeout, self.credentials = base.method, base.timeout, base.credentials
        self.wait_for_ready, self.compression = base.wait_for_ready, base.compression
        self.metadata = metadata


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds ``authorization: Bearer <token>`` to every call (the gateway's virtual-key credential)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def _details(self, details: grpc.ClientCallDetails) -> _Details:
        return _Details(details, [*(details.metadata or ()), ("authorization", f"Bearer {self.token}")])

    def intercept_unary_unary(self, continuation: Callable[..., object], details: grpc.ClientCallDetails,
                              request: object) -> object:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., object], details: grpc.ClientCallDetails,
                               request: object) -> object:
        return continuation(self._details(details), request)


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """Started once for the module (process start-up dominates on a busy machine); the drain test,
    which stops a replica, runs last."""
    tmp_path = tmp_path_factory.mktemp("scale")
    redis_binary()  # skip, saying how to install it, when redis-server is missing
    with ExitStack() as stack:
        redis = RedisServer(tmp_path).start()
        stack.callback(redis.kill)
        shared = Upstream()
        stack.enter_context(shared.fake)
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "model_list": [{"model_name": SHARED_MODEL, "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_base": shared.fake.url + "/v1", "api_key": "sk-shared"}}],
            "general_settings": {"master_key": ADMIN},
            "keys": [{"key": FIVE, "key_alias": "five", "rpm_limit": 5}]}))
        upstreams = [Upstream() for _ in range(2)]
        for up in upstreams:
            stack.enter_context(up.fake)
        ports = [free_port(), free_port()]
        logs = [tmp_path / f"replica-{port}.log" for port in ports]
        procs = [
            stack.enter_context(replica(port, {"OPENAI_API_KEY": "sk-test", "OPENAI_API_BASE": up.fake.url + "/v1",
                                               "LLMRPC_CACHE_PATH": str(tmp_path / f"cache-{port}.sqlite")},
                                        "--grace", "20", "--drain-delay", IMAGE_DRAIN_DELAY, "--num-retries", "0",
                                        "--config", str(config), "--redis-url", redis.url, "--access-log",
                                        log=log))
            for port, up, log in zip(ports, upstreams, logs, strict=True)
        ]
        for port in ports:
            wait_serving(f"127.0.0.1:{port}")
        listen, admin = free_port(), free_port()
        envoy = stack.enter_context(run_envoy(local_config(listen, admin, [("127.0.0.1", p) for p in ports]),
                                              tmp_path, listen, admin))
        wait_until(lambda: envoy.healthy_replicas() == set(ports), 30, "Envoy to health-check both replicas")
        channel = stack.enter_context(grpc.insecure_channel(envoy.address))
        front = Front(envoy, ports, procs, upstreams, pb_grpc.CompletionServiceStub(channel), redis, logs, channel,
                      shared)
        front.stub = front.keyed(ADMIN)
        yield front


def request(text: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(model="openai/gpt-4o-mini", messages=[chat_pb2.Message(role="user", content=text)])


def test_calls_spread_over_both_replicas(front: Front) -> None:
    for i in range(40):
        resp = front.stub.Complete(request(f"hello {i}"), timeout=20)
        assert resp.choices[0].message.content == f"echo: hello {i}"
    for i in range(6):
        chunks = list(front.stub.StreamComplete(pb.StreamCompleteRequest(request=request(f"stream {i}")), timeout=20))
        assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == f"echo: stream {i}"
    counts = [up.calls() for up in front.upstreams]
    assert sum(counts) == 46
    assert min(counts) > 0, f"every call went to one replica: {counts}"


def descriptor_set(path: Path) -> Path:
    """What `make protoset` builds (with buf), built here with grpc_tools' protoc: every proto and its imports."""
    protos = ROOT / "protos"
    include = Path(protoc.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(protos)) for p in (protos / "llmrpc" / "v1").glob("*.proto"))
    assert protoc.main(["protoc", f"-I{protos}", f"-I{include}", "--include_imports",
                        f"--descriptor_set_out={path}", *files]) == 0
    return path


def test_the_optional_json_transcoder_block_serves_plain_http_json(
    front: Front, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    workdir = tmp_path_factory.mktemp("transcoder")
    listen, admin = free_port(), free_port()
    config = local_config(listen, admin, [("127.0.0.1", p) for p in front.ports])
    transcoder = commented_transcoder()
    transcoder["typed_config"]["proto_descriptor"] = str(descriptor_set(workdir / "llmrpc.protoset"))
    (listener,) = config["static_resources"]["listeners"]
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, transcoder)
    with run_envoy(config, workdir, listen, admin) as envoy:
        wait_until(lambda: envoy.healthy_replicas() == set(front.ports), 30, "Envoy to health-check both replicas")
        url = f"http://{envoy.address}/llmrpc.v1.CompletionService/Complete"
        body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "over JSON"}]}
        admin = {"authorization": f"Bearer {ADMIN}"}
        resp = httpx.post(url, json=body, headers=admin, timeout=20)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == "echo: over JSON"
        bad = httpx.post(url, json={"model": "openai/gpt-4o-mini", "messages": []}, headers=admin, timeout=20)
        assert bad.status_code == 400
        # INVALID_ARGUMENT as HTTP 400; the status rides in headers (the descriptor set has no google.rpc
        # types, so the transcoder cannot turn the details into a JSON body).
        assert bad.headers["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
        assert bad.headers["grpc-message"].startswith("messages:")


class SteadyLoad:
    """Threads calling Complete through Envoy back to back until stopped; every failure is kept."""

    def __init__(self, stub: pb_grpc.CompletionServiceStub, threads: int = 3) -> None:
        self.stub = stub
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def _run(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                resp = self.stub.Complete(request(f"load {n}.{i}"), timeout=20)
                assert resp.choices[0].message.content == f"echo: load {n}.{i}"
            except (grpc.RpcError, AssertionError) as exc:
                with self._lock:
                    self.failures.append(repr(exc))
            else:
                with self._lock:
                    self.ok += 1

    def __enter__(self) -> SteadyLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def cached(text: str) -> pb.CompleteRequest:
    req = request(text)
    req.model = SHARED_MODEL
    req.caching = True
    return req


def cache_entries(front: Front) -> int:
    return int(front.redis.cli("EVAL", "return #redis.call('KEYS', 'llmrpc:cache:*')", "0"))


def test_a_prompt_cached_through_one_replica_is_a_hit_through_the_other(front: Front) -> None:
    text = "cache me once for both replicas"
    first = front.stub.Complete(cached(text), timeout=20)
    assert not first.metadata.cache_hit and first.choices[0].message.content == f"echo: {text}"
    wait_until(lambda: cache_entries(front) >= 1, 10, "the answer to reach Redis")  # stored after answering
    for _ in range(6):  # through Envoy: either replica
        assert front.stub.Complete(cached(text), timeout=20).metadata.cache_hit
    # Straight to each replica: one of them never saw the prompt, so its hit can only come from Redis.
    for port in front.ports:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as direct:
            stub = pb_grpc.CompletionServiceStub(grpc.intercept_channel(direct, _Bearer(ADMIN)))
            resp = stub.Complete(cached(text), timeout=20)
        assert resp.metadata.cache_hit and resp.choices[0].message.content == f"echo: {text}"
    assert front.shared.calls(text) == 1


def status_lines(front: Front, status: str) -> list[int]:
    """Per replica: access-log lines of key "five" with ``status``."""
    return [sum(1 for line in log.read_text().splitlines() if "key=five" in line and f"status={status}" in line)
            for log in front.logs]


def test_rpm_limit_5_admits_exactly_5_calls_a_minute_across_both_replicas(front: Front) -> None:
    stub = front.keyed(FIVE)
    if time.time() % 60 > 40:  # the window is the clock minute: start the burst well inside one
        time.sleep(61 - time.time() % 60)
    outcomes: list[str] = []
    for i in range(20):
        try:
            stub.Complete(request(f"limited {i}"), timeout=20)
            outcomes.append("ok")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            outcomes.append("limited")
    assert outcomes == ["ok"] * 5 + ["limited"] * 15
    # Both replicas answered calls of the key (Envoy spreads them), so the count is the shared one.
    def answered() -> list[int]:
        return [ok + limited for ok, limited in zip(status_lines(front, "OK"),
                                                    status_lines(front, "RESOURCE_EXHAUSTED"), strict=True)]

    # A call's access-log line is written as it ends, possibly just after the caller has its answer.
    wait_until(lambda: sum(answered()) == 20, 10, "an access-log line for each call")
    assert sum(status_lines(front, "OK")) == 5 and min(answered()) > 0, answered()


def test_killing_redis_mid_run_degrades_to_misses_and_the_cache_recovers_without_a_restart(front: Front) -> None:
    text = "cached across an outage"
    with SteadyLoad(front.stub, threads=2) as load:
        wait_until(lambda: load.ok >= 10, 30, "steady load through Envoy")
        front.redis.kill()
        ok_at_kill = load.ok
        for _ in range(3):  # misses: each goes upstream, none fails
            resp = front.stub.Complete(cached(text), timeout=20)
            assert not resp.metadata.cache_hit and resp.choices[0].message.content == f"echo: {text}"
        front.keyed(FIVE).Complete(request("keyed while Redis is down"), timeout=20)  # fail-open: own counters
        wait_until(lambda: load.ok >= ok_at_kill + 20, 30, "load to go on without Redis")
        assert front.shared.calls(text) == 3
        wait_until(lambda: any("unavailable for the cache" in log.read_text() for log in front.logs), 10,
                   "a replica to warn that Redis is unavailable")
        front.redis.start()  # same port, empty
        ok_at_restart = load.ok

        def hit_again() -> bool:
            return bool(front.stub.Complete(cached(text), timeout=20).metadata.cache_hit)

        wait_until(hit_again, 30, "the cache to work again through Redis")
        wait_until(lambda: load.ok >= ok_at_restart + 10, 30, "load to go on after Redis is back")
    assert load.failures == []
    assert any("answers again" in log.read_text() for log in front.logs)
    assert cache_entries(front) >= 1


def test_sigterm_drains_a_replica_under_load_without_failing_a_call(front: Front) -> None:
    results: list[list[pb.StreamCompleteResponse] | Exception] = []

    def slow_stream() -> None:
        try:
            results.append(list(front.stub.StreamComplete(pb.StreamCompleteRequest(request=request(SLOW)),
                                                          timeout=30)))
        except grpc.RpcError as exc:
            results.append(exc)

    streams = [threading.Thread(target=slow_stream) for _ in range(8)]
    with SteadyLoad(front.stub) as load:
        wait_until(lambda: load.ok >= 20, 30, "steady load through Envoy")
        for t in streams:
            t.start()
        wait_until(lambda: sum(up.calls(SLOW) for up in front.upstreams) == len(streams), 20,
                   "every slow stream to reach an upstream")
        # Drain the replica carrying more of the streams still running.
        in_flight = [up.calls(SLOW) - len(up.slow_done) for up in front.upstreams]
        victim = max((0, 1), key=lambda i: in_flight[i])
        survivor = 1 - victim
        front.procs[victim].send_signal(signal.SIGTERM)
        assert in_flight[victim] > 0, "the streams finished before the SIGTERM: nothing was drained"

        wait_until(lambda: front.envoy.healthy_replicas() == {front.ports[survivor]}, 20,
                   "Envoy to take the draining replica out of rotation")
        # Taken out by its NOT_SERVING answer, while it still served (its --drain-delay), not by its exit.
        assert front.procs[victim].poll() is None
        assert front.procs[victim].wait(25) == 0  # it exits by itself once its streams are done
        ok_at_exit = load.ok
        victim_calls = front.upstreams[victim].calls()
        wait_until(lambda: load.ok >= ok_at_exit + 30, 30, "load to go on after the replica left")
    for t in streams:
        t.join(30)

    assert load.failures == []
    assert front.upstreams[victim].calls() == victim_calls  # nothing reached the drained replica
    assert len(results) == len(streams)
    for chunks in results:
        assert isinstance(chunks, list), f"a stream failed: {chunks!r}"
        assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "".join(PIECES)
        assert chunks[-1].choices[0].finish_reason == "stop"
    assert len(front.upstreams[victim].slow_done) == front.upstreams[victim].calls(SLOW)
