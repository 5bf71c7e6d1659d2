"""Timeouts: the request's ``timeout``, the server's ``default_timeout`` and the caller's gRPC
deadline; the smallest bounds the whole call, retries and fallbacks included. Streams also end
when the upstream sends nothing for ``stream_idle_timeout`` seconds.

The caller's own deadline ends as DEADLINE_EXCEEDED; a bound the gateway enforces for the caller
(``timeout``, the server default, the idle timeout) is an upstream timeout: UNAVAILABLE with
reason PROVIDER_TIMEOUT / STREAM_IDLE_TIMEOUT, which the thin client raises as ``llmrpc.Timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import llmrpc
import pytest
from llmrpc.exceptions import map_rpc_error
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc
from llmrpc_server import retry
from llmrpc_server.observability import counters

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream, StallReply
from tests.upstreams import openai as oai

MESSAGES = [{"role": "user", "content": "hello"}]
IDLE = 0.5


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oai.default_handler) as up:
        yield up


def env_for(upstream: FakeUpstream) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-server-key", "OPENAI_API_BASE": upstream.url}


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream) -> Iterator[GatewayThread]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(retry, "INITIAL_DELAY", 0.01)
        with GatewayThread(gateway_settings(env_for(upstream), stream_idle_timeout=IDLE, num_retries=2)) as gw:
            yield gw


@pytest.fixture
def client(gateway: GatewayThread, upstream: FakeUpstream) -> Iterator[llmrpc.Client]:
    upstream.reset()
    with llmrpc.Client(gateway.address) as c:
        yield c


@pytest.fixture
def stub(gateway: GatewayThread, upstream: FakeUpstream) -> Iterator[pb_grpc.CompletionServiceStub]:
    upstream.reset()
    with grpc.insecure_channel(gateway.address) as channel:
        yield pb_grpc.CompletionServiceStub(channel)


def request(**fields: Any) -> pb.CompleteRequest:
    return pb.CompleteRequest(model="openai/gpt-4o", messages=[chat_pb2.Message(role="user", content="hello")],
                              **fields)


def timed(fn: Callable[[], Any]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        fn()
    except Exception as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def drain(stub: pb_grpc.CompletionServiceStub, req: pb.CompleteRequest, deadline: float, got: list[str]) -> None:
    for chunk in stub.StreamComplete(pb.StreamCompleteRequest(request=req), timeout=deadline):
        got.extend(c.delta.content for c in chunk.choices)


# ---- which bound applies ------------------------------------------------------------------------


def test_timeout_argument_bounds_retries(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(*[oai.rate_limited(retry_after_ms=300) for _ in range(10)])
    elapsed, err = timed(lambda: client.completion(model="openai/gpt-4o", messages=MESSAGES, num_retries=10,
                                                   timeout=1.0))
    assert isinstance(err, llmrpc.RateLimitError)  # the last real error, not a timeout
    assert elapsed < 1.2
    assert len(upstream.requests) == 4  # 0, 0.3, 0.6, 0.9 s; a fifth would start after the timeout


def test_server_default_timeout_applies_without_timeout(start_gateway: Any, upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.enqueue(StallReply(30))
    gw = start_gateway(env=env_for(upstream), default_timeout=0.5)
    with llmrpc.Client(gw.address) as c:
        elapsed, err = timed(lambda: c.completion(model="openai/gpt-4o", messages=MESSAGES))
    assert isinstance(err, llmrpc.Timeout) and err.reason == "PROVIDER_TIMEOUT"
    assert err.grpc_code == grpc.StatusCode.UNAVAILABLE
    assert 0.5 <= elapsed < 1.5
    # Abandoned, and noticed by the fake before the next test counts disconnects on the shared upstream.
    assert upstream.wait_for(lambda: upstream.disconnects == 1)


def test_smaller_timeout_argument_wins_over_the_server_default(start_gateway: Any, upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.enqueue(StallReply(30), StallReply(30))
    gw = start_gateway(env=env_for(upstream), default_timeout=1.0)
    with llmrpc.Client(gw.address) as c:
        short, _ = timed(lambda: c.completion(model="openai/gpt-4o", messages=MESSAGES, timeout=0.3))
        capped, err = timed(lambda: c.completion(model="openai/gpt-4o", messages=MESSAGES, timeout=30))
    assert 0.3 <= short < 0.8
    assert 1.0 <= capped < 1.8 and isinstance(err, llmrpc.Timeout)
    assert upstream.wait_for(lambda: upstream.disconnects == 2)  # both abandoned, before the next test


def test_caller_deadline_is_deadline_exceeded_and_counted(stub: pb_grpc.CompletionServiceStub,
                                                          upstream: FakeUpstream, gateway: GatewayThread) -> None:
    counted = gateway.counters
    upstream.enqueue(StallReply(30))
    before = counted.total(counters.DEADLINE_EXCEEDED)
    elapsed, err = timed(lambda: stub.Complete(request(timeout=30), timeout=0.5))
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(map_rpc_error(err, model="openai/gpt-4o", target="test"), llmrpc.Timeout)
    assert elapsed < 1.0
    assert upstream.wait_for(lambda: upstream.disconnects == 1)  # the upstream call was abandoned
    assert counted.total(counters.DEADLINE_EXCEEDED) == before + 1


def test_caller_deadline_bounds_retries_and_fallbacks(stub: pb_grpc.CompletionServiceStub,
                                                      upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.server_error(503), StallReply(30))
    req = request(num_retries=5, fallbacks=["openai/backup"])
    elapsed, err = timed(lambda: stub.Complete(req, timeout=0.8))
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.3
    assert [r.json()["model"] for r in upstream.requests] == ["gpt-4o", "gpt-4o"]


def test_retry_after_beyond_the_caller_deadline_returns_the_real_error(stub: pb_grpc.CompletionServiceStub,
                                                                       upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.rate_limited(retry_after="5"), oai.chat_completion("too late"))
    elapsed, err = timed(lambda: stub.Complete(request(num_retries=3), timeout=2))
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert elapsed < 0.5
    assert isinstance(map_rpc_error(err, model=None, target="test"), llmrpc.RateLimitError)


# ---- streams ------------------------------------------------------------------------------------


def test_caller_deadline_mid_stream_keeps_the_chunks_so_far(stub: pb_grpc.CompletionServiceStub,
                                                            upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.chat_stream([f"w{i} " for i in range(20)], delay=0.1))
    got: list[str] = []
    elapsed, err = timed(lambda: drain(stub, request(), 0.75, got))
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 3 <= len([t for t in got if t]) <= 8
    assert "".join(got) == "".join(f"w{i} " for i in range(len([t for t in got if t])))
    assert elapsed < 1.2
    assert upstream.wait_for(lambda: upstream.disconnects == 1)


def test_timeout_argument_mid_stream_is_a_timeout(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.chat_stream([f"w{i} " for i in range(20)], delay=0.1))
    got: list[str] = []
    with pytest.raises(llmrpc.Timeout) as info:
        for chunk in client.completion(model="openai/gpt-4o", messages=MESSAGES, stream=True, timeout=0.75):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert info.value.reason == "PROVIDER_TIMEOUT"
    assert "".join(got).startswith("w0 w1 w2 ")


def test_idle_timeout_is_per_read_not_per_stream(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    """Chunks 0.3 s apart never trip a 0.5 s idle timeout, however long the stream takes."""
    pieces = [f"w{i} " for i in range(3)]
    upstream.enqueue(oai.chat_stream(pieces, delay=0.3))
    started = time.monotonic()
    chunks = list(client.completion(model="openai/gpt-4o", messages=MESSAGES, stream=True))
    assert time.monotonic() - started > 2 * IDLE
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(pieces)


def test_idle_timeout_covers_the_wait_for_headers(client: llmrpc.Client, upstream: FakeUpstream,
                                                  gateway: GatewayThread) -> None:
    counted = gateway.counters
    upstream.enqueue(StallReply(30), oai.chat_stream(["late ", "but ", "fine"]))
    before = counted.by_reason(counters.STREAM_IDLE_TIMEOUTS).get("headers", 0)
    chunks = list(client.completion(model="openai/gpt-4o", messages=MESSAGES, stream=True, num_retries=1))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "late but fine"
    assert [a["outcome"] for a in chunks[0]._hidden_params["attempt_log"]] == ["STREAM_IDLE_TIMEOUT", "ok"]
    assert counted.by_reason(counters.STREAM_IDLE_TIMEOUTS)["headers"] == before + 1


def test_idle_timeout_after_partial_output(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(oai.chat_stream(["a", "b"], then="hang", done=False))
    got: list[str] = []
    started = time.monotonic()
    with pytest.raises(llmrpc.Timeout) as info:
        for chunk in client.completion(model="openai/gpt-4o", messages=MESSAGES, stream=True, num_retries=2):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert IDLE <= time.monotonic() - started < IDLE + 1
    assert "".join(got) == "ab"
    assert info.value.reason == "STREAM_IDLE_TIMEOUT" and info.value.grpc_code == grpc.StatusCode.UNAVAILABLE
    assert len(upstream.requests) == 1
    assert upstream.wait_for(lambda: upstream.disconnects == 1)


def test_idle_timeout_is_a_server_setting(start_gateway: Any, upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.enqueue(oai.chat_stream(["a"], first_delay=0.6))  # slower than IDLE, within 2 s
    gw = start_gateway(env=env_for(upstream), stream_idle_timeout=2.0)
    with llmrpc.Client(gw.address) as c:
        chunks = list(c.completion(model="openai/gpt-4o", messages=MESSAGES, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
