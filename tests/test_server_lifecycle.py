"""The real server process: health, graceful shutdown on SIGTERM, refusing new calls while draining."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from tests.support import free_port, wait_serving


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["LLMRPC_CACHE_PATH"] = str(tmp_path / "cache.sqlite")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmrpc_server", "--host", "127.0.0.1", "--port", str(port), "--grace", "5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    address = f"127.0.0.1:{port}"
    try:
        wait_serving(address)
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def slow_request(delay: float) -> pb.CompleteRequest:
    req = pb.CompleteRequest(model="mock/echo", messages=[chat_pb2.Message(role="user", content="slow")])
    req.extra_body.update({"mock_delay": delay})
    return req


def test_sigterm_lets_in_flight_calls_finish_and_refuses_new_ones(
    server_process: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, address = server_process
    results: dict[str, object] = {}
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)

        def unary() -> None:
            results["unary"] = stub.Complete(slow_request(1.5), timeout=20)

        def stream() -> None:
            results["stream"] = list(stub.StreamComplete(pb.StreamCompleteRequest(request=slow_request(1.5)),
                                                         timeout=20))

        threads = [threading.Thread(target=unary), threading.Thread(target=stream)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with grpc.insecure_channel(address) as fresh:
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.CompletionServiceStub(fresh).Complete(slow_request(0), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        for t in threads:
            t.join(20)
    unary_resp = results["unary"]
    assert isinstance(unary_resp, pb.CompleteResponse)
    assert unary_resp.choices[0].message.content.endswith("You said: slow")
    chunks = results["stream"]
    assert isinstance(chunks, list) and chunks[-1].choices[0].finish_reason == "stop"
    assert proc.wait(10) == 0


def test_health_reports_serving_for_the_service(server_process: tuple[subprocess.Popen[bytes], str]) -> None:
    _, address = server_process
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        resp = health.Check(health_pb2.HealthCheckRequest(service="llmrpc.v1.CompletionService"), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_sigterm_tells_health_watchers_not_serving_and_ends_their_streams(tmp_path: Path) -> None:
    """A Watch (client-side health checking keeps one open per connection) sees NOT_SERVING first and
    then ends OK, so it does not hold the draining server for its whole --grace (60 s here)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["LLMRPC_CACHE_PATH"] = str(tmp_path / "cache.sqlite")
    proc = subprocess.Popen([sys.executable, "-m", "llmrpc_server", "--host", "127.0.0.1", "--port", str(port),
                             "--grace", "60"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_serving(f"127.0.0.1:{port}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="llmrpc.v1.CompletionService"), timeout=120)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            proc.send_signal(signal.SIGTERM)
            after = [r.status for r in watch]  # ends (OK) instead of waiting out the grace period
            assert after and set(after) == {health_pb2.HealthCheckResponse.NOT_SERVING}
            assert watch.code() == grpc.StatusCode.OK
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_drain_delay_keeps_serving_calls_while_health_says_not_serving(tmp_path: Path) -> None:
    """--drain-delay: after SIGTERM health is NOT_SERVING at once (balancers stop sending), but calls that
    still arrive are served, not cancelled, until the delay is over."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["LLMRPC_CACHE_PATH"] = str(tmp_path / "cache.sqlite")
    proc = subprocess.Popen([sys.executable, "-m", "llmrpc_server", "--host", "127.0.0.1", "--port", str(port),
                             "--drain-delay", "120", "--grace", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        address = f"127.0.0.1:{port}"
        wait_serving(address)
        proc.send_signal(signal.SIGTERM)
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="llmrpc.v1.CompletionService")
            deadline = time.monotonic() + 30
            while health.Check(request, timeout=5).status != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline, "health never turned NOT_SERVING"
                time.sleep(0.05)
            resp = pb_grpc.CompletionServiceStub(channel).Complete(slow_request(0), timeout=10)
        assert resp.choices[0].message.content.endswith("You said: slow")
        assert proc.poll() is None  # still draining: the delay is not over
    finally:
        proc.kill()
        proc.wait(10)
