"""Shared fixtures: a running gateway and the fake providers it talks to."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from tests.support import GatewayThread, gateway_settings

# LiteLLM (the parity suite's reference) must read its bundled price map, never fetch one, whoever imports it.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture
def start_gateway() -> Iterator[Callable[..., GatewayThread]]:
    """Factory: ``start_gateway(env={...}, **settings)`` starts a gateway stopped after the test."""
    started: list[GatewayThread] = []

    def start(env: dict[str, str] | None = None, **overrides: Any) -> GatewayThread:
        gw = GatewayThread(gateway_settings(env, **overrides)).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="session")
def mock_gateway() -> Iterator[GatewayThread]:
    """One gateway for tests that only need the offline mock provider."""
    with GatewayThread(gateway_settings()) as gw:
        yield gw


@pytest.fixture
def stub(mock_gateway: GatewayThread) -> Iterator[pb_grpc.CompletionServiceStub]:
    """A raw generated stub, as a polyglot caller would use it."""
    with grpc.insecure_channel(mock_gateway.address) as channel:
        yield pb_grpc.CompletionServiceStub(channel)
