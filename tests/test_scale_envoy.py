"""Scale-out behind a real gRPC load balancer: Envoy (deploy/envoy/envoy.yaml) in front of two gateway
processes, each with its own fake OpenAI upstream, so which replica served a call is seen upstream.

Through Envoy: calls spread over both replicas; SIGTERM on one replica under steady load drains it (its
health turns NOT_SERVING, Envoy takes it out), no unary call fails and the streams in flight on it finish.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from aiohttp import web
from dockerfile_parse import DockerfileParser
from grpc_tools import protoc
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from tests.envoy_front import ROOT, Envoy, commented_transcoder, local_config, replica, run_envoy, wait_until
from tests.support import free_port, wait_serving
from tests.upstreams import Exchange, FakeUpstream, RecordedRequest, Reply, openai

IMAGE_DRAIN_DELAY = DockerfileParser(str(ROOT)).envs["LLMRPC_DRAIN_DELAY"]  # replicas drain as the image's do
SLOW = "a slow stream"
PIECES = [f"piece{i} " for i in range(20)]
PIECE_DELAY = 0.15  # 20 pieces: a stream lasts ~3 s upstream, long enough to be in flight at SIGTERM


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
    stub: pb_grpc.CompletionServiceStub


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """Started once for the module (process start-up dominates on a busy machine); the drain test,
    which stops a replica, runs last."""
    tmp_path = tmp_path_factory.mktemp("scale")
    with ExitStack() as stack:
        upstreams = [Upstream() for _ in range(2)]
        for up in upstreams:
            stack.enter_context(up.fake)
        ports = [free_port(), free_port()]
        procs = [
            stack.enter_context(replica(port, {"OPENAI_API_KEY": "sk-test", "OPENAI_API_BASE": up.fake.url + "/v1",
                                               "LLMRPC_CACHE_PATH": str(tmp_path / f"cache-{port}.sqlite")},
                                        "--grace", "20", "--drain-delay", IMAGE_DRAIN_DELAY, "--num-retries", "0",
                                        log=tmp_path / f"replica-{port}.log"))
            for port, up in zip(ports, upstreams, strict=True)
        ]
        for port in ports:
            wait_serving(f"127.0.0.1:{port}")
        listen, admin = free_port(), free_port()
        envoy = stack.enter_context(run_envoy(local_config(listen, admin, [("127.0.0.1", p) for p in ports]),
                                              tmp_path, listen, admin))
        wait_until(lambda: envoy.healthy_replicas() == set(ports), 30, "Envoy to health-check both replicas")
        channel = stack.enter_context(grpc.insecure_channel(envoy.address))
        yield Front(envoy, ports, procs, upstreams, pb_grpc.CompletionServiceStub(channel))


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
        resp = httpx.post(url, json=body, timeout=20)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == "echo: over JSON"
        bad = httpx.post(url, json={"model": "openai/gpt-4o-mini", "messages": []}, timeout=20)
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
