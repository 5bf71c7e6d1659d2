"""Gateway credentials (--auth-tokens): every RPC but health and reflection needs a bearer token."""

from __future__ import annotations

from typing import Any

import grpc
import llmrpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gateway(start_gateway: Any) -> Any:
    return start_gateway(auth_tokens=("s3cret", "other-token"))


def test_missing_token_is_unauthenticated(gateway: Any) -> None:
    with llmrpc.Client(gateway.address) as client, pytest.raises(llmrpc.AuthenticationError) as info:
        client.completion(model="mock/echo", messages=MESSAGES)
    assert info.value.grpc_code == grpc.StatusCode.UNAUTHENTICATED
    assert info.value.reason == "API_KEY_INVALID"


def test_wrong_token_is_rejected_for_streams_too(gateway: Any) -> None:
    client = llmrpc.Client(gateway.address, metadata=[("authorization", "Bearer nope")])
    with client, pytest.raises(llmrpc.AuthenticationError):
        list(client.completion(model="mock/echo", messages=MESSAGES, stream=True))


@pytest.mark.parametrize("header", [("authorization", "Bearer s3cret"), ("x-api-key", "other-token")])
def test_valid_token_is_served(gateway: Any, header: tuple[str, str]) -> None:
    with llmrpc.Client(gateway.address, metadata=[header]) as client:
        resp = client.completion(model="mock/echo", messages=MESSAGES)
        chunks = list(client.completion(model="mock/echo", messages=MESSAGES, stream=True))
    assert resp.choices[0].message.content.endswith("You said: hi")
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_health_needs_no_token(gateway: Any) -> None:
    with grpc.insecure_channel(gateway.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
