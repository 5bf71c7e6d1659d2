"""Test support: the real gateway running in-process on its own thread and event loop.

Sync tests (and the sync thin client) talk to it over a real TCP socket, exactly like a caller in
another process would; fake providers run on their own threads too (tests/upstreams)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmrpc.v1 import completion_service_pb2_grpc
from llmrpc_server.app import Gateway, start_gateway
from llmrpc_server.config import Settings
from llmrpc_server.observability.counters import Counters

T = TypeVar("T")

__all__ = ["GatewayThread", "free_port", "gateway_settings", "serve_servicer", "wait_serving"]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(address: str, timeout: float = 30.0) -> None:
    """Block until the gRPC health service at ``address`` reports SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise TimeoutError(f"server at {address} never became SERVING")


@contextmanager
def serve_servicer(servicer: completion_service_pb2_grpc.CompletionServiceServicer) -> Iterator[str]:
    """A sync gRPC server for a fake ``CompletionService`` (client tests); yields its address."""
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    completion_service_pb2_grpc.add_CompletionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def gateway_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings for an in-process gateway: loopback, a free port, no inherited provider keys."""
    base = Settings(host="127.0.0.1", port=0, grace=1.0, num_retries=0, env=dict(env or {}),
                    cache_path=":memory:")
    return replace(base, **overrides)


class GatewayThread:
    """Runs :func:`start_gateway` in a background loop; ``address`` is ``127.0.0.1:<port>``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self.gateway: Gateway | None = None

    def start(self) -> GatewayThread:
        self._thread.start()
        self.gateway = self.run(start_gateway(self.settings))
        return self

    @property
    def address(self) -> str:
        assert self.gateway is not None
        return f"127.0.0.1:{self.gateway.port}"

    @property
    def counters(self) -> Counters:
        """The running gateway's resilience counters."""
        assert self.gateway is not None
        return self.gateway.counters

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the gateway's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self, grace: float = 0.5) -> None:
        if self.gateway is not None:
            self.run(self.gateway.stop(grace))
            self.gateway = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
