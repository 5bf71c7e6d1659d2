"""--access-log: one line per RPC through the real server, including cancelled and expired calls."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator

import grpc
import pytest
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream, StallReply
from tests.upstreams import openai as oai

TOKENS = ("tok-first", "tok-second")
LINE = re.compile(r"rpc=(\S+) model=(\S+) key=(\S+) status=(\S+) duration_ms=([\d.]+) attempts=(\S+) cache_hit=(\S+)")


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oai.default_handler) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream) -> Iterator[GatewayThread]:
    env = {"OPENAI_API_KEY": "sk-server", "OPENAI_API_BASE": upstream.url}
    with GatewayThread(gateway_settings(env, access_log=True, auth_tokens=TOKENS)) as gw:
        yield gw


@pytest.fixture
def stub(gateway: GatewayThread, upstream: FakeUpstream) -> Iterator[pb_grpc.CompletionServiceStub]:
    upstream.reset()
    with grpc.insecure_channel(gateway.address) as channel:
        yield pb_grpc.CompletionServiceStub(channel)


def _request(model: str, text: str = "hi") -> pb.CompleteRequest:
    return pb.CompleteRequest(model=model, messages=[chat_pb2.Message(role="user", content=text)])


def _lines(caplog: pytest.LogCaptureFixture, count: int = 1) -> list[tuple[str, ...]]:
    """The access lines so far; the line is written when the RPC ends on the server, just after the
    caller has its answer, so wait for it."""
    deadline = time.monotonic() + 10
    while True:
        found = [m.groups() for r in caplog.records if r.name == "llmrpc_server.access"
                 for m in [LINE.fullmatch(r.getMessage())] if m]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def _auth(index: int) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {TOKENS[index]}")]


def test_an_answered_call_logs_model_key_status_attempts_and_cache(
    stub: pb_grpc.CompletionServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmrpc_server.access")
    stub.Complete(_request("openai/gpt-4o"), metadata=_auth(1), timeout=10)
    [(rpc, model, key, status, duration, attempts, cache_hit)] = _lines(caplog)
    assert (rpc, model, key, status, attempts, cache_hit) == (
        "/llmrpc.v1.CompletionService/Complete", "openai/gpt-4o", "1", "OK", "1", "false")
    assert float(duration) > 0
    assert "tok-second" not in caplog.text


def test_a_failed_call_logs_its_status_and_attempts(
    stub: pb_grpc.CompletionServiceStub, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmrpc_server.access")
    upstream.enqueue(oai.invalid_api_key())
    with pytest.raises(grpc.RpcError):
        stub.Complete(_request("openai/gpt-4o"), metadata=_auth(0), timeout=10)
    [line] = _lines(caplog)
    assert line[2:4] == ("0", "FAILED_PRECONDITION") and line[5] == "1"


def test_rejected_credentials_are_logged_without_a_key(
    stub: pb_grpc.CompletionServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmrpc_server.access")
    with pytest.raises(grpc.RpcError):
        stub.Complete(_request("mock/echo"), metadata=[("authorization", "Bearer wrong")], timeout=10)
    [line] = _lines(caplog)
    assert line[1:4] == ("mock/echo", "-", "UNAUTHENTICATED")
    assert "wrong" not in caplog.text


def test_a_cancelled_stream_is_logged_as_cancelled(
    stub: pb_grpc.CompletionServiceStub, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmrpc_server.access")
    upstream.enqueue(oai.chat_stream([f"w{i} " for i in range(200)], delay=0.02))
    call = stub.StreamComplete(pb.StreamCompleteRequest(request=_request("openai/gpt-4o")), metadata=_auth(0),
                               timeout=30)
    for i, _ in enumerate(call):
        if i == 2:
            call.cancel()
            break
    [line] = _lines(caplog)
    assert line[0] == "/llmrpc.v1.CompletionService/StreamComplete"
    assert line[1:4] == ("openai/gpt-4o", "0", "CANCELLED")
    assert upstream.wait_for(lambda: upstream.disconnects >= 1)


def test_an_expired_deadline_is_logged_as_deadline_exceeded(
    stub: pb_grpc.CompletionServiceStub, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmrpc_server.access")
    upstream.enqueue(StallReply(10))
    with pytest.raises(grpc.RpcError) as info:
        stub.Complete(_request("openai/gpt-4o"), metadata=_auth(0), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    [line] = _lines(caplog)
    assert line[3] == "DEADLINE_EXCEEDED"
    assert upstream.wait_for(lambda: upstream.disconnects >= 1)


def test_off_by_default(start_gateway: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmrpc_server.access")
    gw = start_gateway()  # type: ignore[operator]
    with grpc.insecure_channel(gw.address) as channel:
        pb_grpc.CompletionServiceStub(channel).Complete(_request("mock/echo"), timeout=10)
    time.sleep(0.2)
    assert [r for r in caplog.records if r.name == "llmrpc_server.access"] == []
