"""Fault injection: every way an upstream misbehaves, through the real gateway and the thin client.

Each row scripts a local upstream and states what the caller must see: the gRPC status, the exception
``llmrpc`` raises, how many upstream attempts were made and (streams) the text that arrived before
the failure. After every row the server must still be SERVING, with no leaked tasks on its event
loop, no leaked descriptors in this process (gateway and upstream both run in it) and no upstream
connection left behind. ``make faults`` runs this file with test_fallbacks.py and test_timeouts.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import llmrpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmrpc_server import retry
from llmrpc_server.app import SERVICE_NAME
from llmrpc_server.observability import counters

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream, closed_port_url
from tests.upstreams import openai as oai
from tests.upstreams.server import JSONReply, RawReply, Reply, ResetReply, SSEReply, StallReply, Then

MESSAGES = [{"role": "user", "content": "hello"}]
IDLE = 0.4  # the gateway's stream_idle_timeout in this module
BODY_LIMIT = 1 << 20  # the gateway's max_response_bytes in this module
UNAVAILABLE, EXHAUSTED = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED


def partial_stream(*extra: str, then: Then = "close") -> SSEReply:
    """A stream that delivers "one two " (role chunk + two content chunks), then ``extra`` events,
    then ends as ``then`` says, without a finish chunk or ``[DONE]``."""
    head = oai.chat_stream(["one ", "two ", "three"], error_after=2).events[:-1]
    return SSEReply([*head, *extra], headers=oai.response_headers(), then=then)


def times(n: int, reply: Callable[[], Reply]) -> Callable[[], list[Reply]]:
    return lambda: [reply() for _ in range(n)]


@dataclass(frozen=True)
class Fault:
    """One row of the table. ``code=None``: the call succeeds."""

    name: str
    replies: Callable[[], list[Reply]]
    code: grpc.StatusCode | None
    exc: type[Exception] | None
    attempts: int
    stream: bool = False
    text: str = ""  # streams: content the caller got before the failure (or in full)
    reason: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    min_seconds: float = 0.0
    broken: bool = False  # a stream that failed after its first chunk: counted as broken

    def __str__(self) -> str:
        return self.name


HUGE = b'{"id": "chatcmpl-1", "choices": [], "pad": "' + b"a" * (2 * BODY_LIMIT) + b'"}'

FAULTS = [
    # ---- unary: status errors, retried num_retries=2 times -------------------------------------
    Fault("429 retry-after", times(3, lambda: oai.rate_limited(retry_after="0.1")), EXHAUSTED,
          llmrpc.RateLimitError, 3, reason="RATE_LIMITED", min_seconds=0.2),
    Fault("429 retry-after-ms", times(3, lambda: oai.rate_limited(retry_after_ms=100)), EXHAUSTED,
          llmrpc.RateLimitError, 3, reason="RATE_LIMITED", min_seconds=0.2),
    Fault("429 then success", lambda: [oai.rate_limited(retry_after_ms=50), oai.chat_completion("ok")],
          None, None, 2, text="ok", min_seconds=0.05),
    Fault("500", times(3, lambda: oai.server_error(500)), UNAVAILABLE, llmrpc.InternalServerError, 3),
    Fault("502", times(3, lambda: oai.server_error(502)), UNAVAILABLE, llmrpc.BadGatewayError, 3),
    Fault("503", times(3, lambda: oai.server_error(503)), UNAVAILABLE, llmrpc.ServiceUnavailableError, 3),
    Fault("504", times(3, lambda: oai.error(504, "gateway timeout", type="timeout")), UNAVAILABLE,
          llmrpc.Timeout, 3, reason="PROVIDER_TIMEOUT"),
    Fault("529", times(3, lambda: oai.error(529, "Overloaded", type="overloaded_error")), UNAVAILABLE,
          llmrpc.InternalServerError, 3, reason="PROVIDER_OVERLOADED"),
    # ---- unary: transport failures and bad bodies ------------------------------------------------
    Fault("connection refused", list, UNAVAILABLE, llmrpc.APIConnectionError, 3, reason="PROVIDER_UNREACHABLE",
          kwargs={"api_base": closed_port_url(), "api_key": "sk-caller"}),
    Fault("reset mid-body", times(3, lambda: ResetReply(after_bytes=b'{"id": "chatcmpl-1", "choi')),
          UNAVAILABLE, llmrpc.APIConnectionError, 3, reason="PROVIDER_UNREACHABLE"),
    Fault("stall before headers", lambda: [StallReply(30)], UNAVAILABLE, llmrpc.Timeout, 1,
          reason="PROVIDER_TIMEOUT", kwargs={"timeout": 0.5}, min_seconds=0.5),
    Fault("malformed JSON", times(3, lambda: JSONReply(200, '{"id": "chatcmpl-1", "choices": [')),
          UNAVAILABLE, llmrpc.APIError, 3, reason="PROVIDER_BAD_RESPONSE"),
    Fault("wrong content type", times(3, lambda: RawReply(200, b"<html>bad gateway</html>", "text/html")),
          UNAVAILABLE, llmrpc.APIError, 3, reason="PROVIDER_BAD_RESPONSE"),
    Fault("body over the limit", times(3, lambda: RawReply(200, HUGE, "application/json")),
          UNAVAILABLE, llmrpc.APIError, 3, reason="PROVIDER_BAD_RESPONSE"),
    Fault("large body within the limit", lambda: [oai.chat_completion("x" * (BODY_LIMIT - 4096))],
          None, None, 1, text="x" * (BODY_LIMIT - 4096)),
    # ---- streams: failures before the first chunk are retried --------------------------------------
    Fault("stream 429", times(3, lambda: oai.rate_limited(retry_after_ms=20)), EXHAUSTED,
          llmrpc.RateLimitError, 3, stream=True, reason="RATE_LIMITED"),
    Fault("stream 503 then success", lambda: [oai.server_error(503), oai.chat_stream(["a", "b"])],
          None, None, 2, stream=True, text="ab"),
    Fault("stream stall before headers", times(3, lambda: StallReply(30)), UNAVAILABLE, llmrpc.Timeout, 3,
          stream=True, reason="STREAM_IDLE_TIMEOUT", min_seconds=3 * IDLE),
    Fault("stream stall before first chunk", times(3, lambda: oai.chat_stream(["a"], first_delay=30)),
          UNAVAILABLE, llmrpc.Timeout, 3, stream=True, reason="STREAM_IDLE_TIMEOUT", min_seconds=3 * IDLE),
    Fault("stream refused", list, UNAVAILABLE, llmrpc.APIConnectionError, 3, stream=True,
          reason="PROVIDER_UNREACHABLE", kwargs={"api_base": closed_port_url(), "api_key": "sk-caller"}),
    Fault("stream line over the limit", times(3, lambda: SSEReply(["data: " + "a" * (2 * BODY_LIMIT)])),
          UNAVAILABLE, llmrpc.APIError, 3, stream=True, reason="PROVIDER_BAD_RESPONSE"),
    Fault("stream wrong content type", times(3, lambda: RawReply(200, b"<html>oops</html>", "text/html")),
          UNAVAILABLE, llmrpc.APIError, 3, stream=True, reason="PROVIDER_BAD_RESPONSE"),
    # ---- streams: failures after partial output reach the caller after every chunk so far ----------
    Fault("stream stall between chunks", lambda: [partial_stream(then="hang")], UNAVAILABLE, llmrpc.Timeout,
          1, stream=True, text="one two ", reason="STREAM_IDLE_TIMEOUT", broken=True),
    Fault("stream reset mid-body", lambda: [partial_stream(then="reset")], UNAVAILABLE,
          llmrpc.APIConnectionError, 1, stream=True, text="one two ", reason="PROVIDER_UNREACHABLE", broken=True),
    Fault("stream malformed chunk", lambda: [partial_stream('data: {"id": "chatcmpl-123", "choi')],
          UNAVAILABLE, llmrpc.APIError, 1, stream=True, text="one two ", reason="PROVIDER_BAD_RESPONSE",
          broken=True),
    Fault("stream truncated", lambda: [partial_stream()], UNAVAILABLE, llmrpc.APIError, 1, stream=True,
          text="one two ", reason="PROVIDER_STREAM_ERROR", broken=True),
    Fault("stream error event", lambda: [oai.chat_stream(["one ", "two ", "three"], error_after=2)],
          UNAVAILABLE, llmrpc.APIError, 1, stream=True, text="one two ", reason="PROVIDER_STREAM_ERROR",
          broken=True),
]


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oai.default_handler) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream) -> Iterator[GatewayThread]:
    env = {"OPENAI_API_KEY": "sk-server-key", "OPENAI_API_BASE": upstream.url}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(retry, "INITIAL_DELAY", 0.01)  # exponential backoff in ms, not seconds
        with GatewayThread(gateway_settings(env, stream_idle_timeout=IDLE, num_retries=2)) as gw:
            assert gw.gateway is not None
            gw.gateway.executor.max_response_bytes = BODY_LIMIT
            yield gw


@pytest.fixture(scope="module")
def client(gateway: GatewayThread, upstream: FakeUpstream) -> Iterator[llmrpc.Client]:
    with llmrpc.Client(gateway.address) as c:
        c.completion(model="openai/gpt-4o", messages=MESSAGES)  # warm: channel, pools, health channel
        assert serving(gateway)
        yield c


# ---- leak accounting ----------------------------------------------------------------------------


async def _loop_tasks() -> int:
    return len(asyncio.all_tasks()) - 1  # minus this coroutine's own task


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Resources:
    """What the process holds: tasks on the gateway loop, descriptors, upstream connections."""

    tasks: int
    fds: int
    connections: int

    @classmethod
    def now(cls, gw: GatewayThread, up: FakeUpstream) -> Resources:
        return cls(gw.run(_loop_tasks()), open_fds(), up.open_connections)


# Idle keep-alive connections the executor may pool to one upstream: one for unary calls and one
# for streams (streams use their own client, whose reads time out after the stream idle timeout).
POOLED = 2


def settled(gw: GatewayThread, up: FakeUpstream, baseline: Resources, timeout: float = 5.0) -> Resources:
    """Wait until the process is back to ``baseline``: the same tasks, at most one idle pooled
    keep-alive connection more (2 descriptors: both ends live in this process)."""
    deadline = time.monotonic() + timeout
    while True:
        now = Resources.now(gw, up)
        ok = now.tasks <= baseline.tasks and now.fds <= baseline.fds + 2 and now.connections <= POOLED
        if ok or time.monotonic() > deadline:
            return now
        time.sleep(0.02)


def serving(gw: GatewayThread) -> bool:
    with grpc.insecure_channel(gw.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status
        return bool(status == health_pb2.HealthCheckResponse.SERVING)


# ---- the table ----------------------------------------------------------------------------------


def call(client: llmrpc.Client, fault: Fault) -> tuple[str, Any]:
    """Run the call; (text received, response or exception)."""
    kwargs = {"model": "openai/gpt-4o", "messages": MESSAGES, **fault.kwargs}
    if not fault.stream:
        try:
            resp = client.completion(**kwargs)
        except Exception as exc:
            return "", exc
        return resp.choices[0].message.content or "", resp
    text: list[str] = []
    try:
        for chunk in client.completion(stream=True, **kwargs):
            text.extend(c.delta.content or "" for c in chunk.choices)
    except Exception as exc:
        return "".join(text), exc
    return "".join(text), None


@pytest.mark.parametrize("fault", FAULTS, ids=str)
def test_fault(fault: Fault, client: llmrpc.Client, gateway: GatewayThread, upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.enqueue(*fault.replies())
    before = Resources.now(gateway, upstream)
    counted = gateway.counters.snapshot()
    started = time.monotonic()
    text, outcome = call(client, fault)
    elapsed = time.monotonic() - started

    assert text == fault.text
    assert elapsed >= fault.min_seconds
    assert elapsed < fault.min_seconds + 5, "the call should end promptly"
    if fault.code is None:
        assert not isinstance(outcome, Exception), outcome
        if not fault.stream:
            assert outcome._hidden_params["attempts"] == fault.attempts
    else:
        assert type(outcome) is fault.exc, repr(outcome)
        assert outcome.grpc_code == fault.code
        assert outcome.metadata["attempts"] == str(fault.attempts)
        if fault.reason:
            assert outcome.reason == fault.reason
    if "api_base" not in fault.kwargs:
        assert len(upstream.requests) == fault.attempts
    assert upstream.pending == 0

    after = gateway.counters.snapshot()
    assert after[counters.RETRIES] - counted[counters.RETRIES] == fault.attempts - 1
    assert after[counters.STREAMS_BROKEN] - counted[counters.STREAMS_BROKEN] == int(fault.broken)

    assert serving(gateway)
    now = settled(gateway, upstream, before)
    assert now.tasks <= before.tasks, f"leaked tasks on the gateway loop: {before} -> {now}"
    assert now.fds <= before.fds + 2, f"leaked descriptors: {before} -> {now}"
    assert now.connections <= POOLED, f"upstream connections left open: {now}"


def test_rate_limit_hint_reaches_the_caller(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    """The last 429's retry-after comes back as RetryInfo, so the caller can wait as told."""
    upstream.reset()
    upstream.enqueue(oai.rate_limited(retry_after="0.1"), oai.rate_limited(retry_after_ms=250))
    with pytest.raises(llmrpc.RateLimitError) as info:
        client.completion(model="openai/gpt-4o", messages=MESSAGES, num_retries=1)
    assert info.value.retry_after == pytest.approx(0.25)


def test_long_retry_after_is_not_slept_past_the_deadline(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    """A retry that cannot happen within the call's timeout is not waited for."""
    upstream.reset()
    upstream.enqueue(oai.rate_limited(retry_after="30"), oai.chat_completion("late"))
    started = time.monotonic()
    with pytest.raises(llmrpc.RateLimitError) as info:
        client.completion(model="openai/gpt-4o", messages=MESSAGES, timeout=2)
    assert time.monotonic() - started < 1
    assert info.value.metadata["attempts"] == "1"
    upstream.reset()


def test_no_resources_leak_across_the_whole_table(gateway: GatewayThread, upstream: FakeUpstream,
                                                  client: llmrpc.Client) -> None:
    """Every row once more, back to back: the totals may not grow with the number of faults."""
    upstream.reset()
    client.completion(model="openai/gpt-4o", messages=MESSAGES)  # warm: a pooled connection exists
    before = Resources.now(gateway, upstream)
    for fault in FAULTS:
        if fault.min_seconds > 0.5:
            continue  # the slow stall rows were covered above
        upstream.reset()
        upstream.enqueue(*fault.replies())
        call(client, fault)
    now = settled(gateway, upstream, before)
    assert (now.tasks <= before.tasks, now.fds <= before.fds + 2, now.connections <= POOLED) == (True, True, True), now
    assert serving(gateway)
