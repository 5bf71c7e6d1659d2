"""Bad input: every invalid request is INVALID_ARGUMENT with a BadRequest violation naming the field."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

GOOD: dict[str, Any] = {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}


def _violations(err: grpc.RpcError) -> tuple[str, list[str]]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    reason, fields = "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return reason, fields


def _complete(stub: pb_grpc.CompletionServiceStub, body: dict[str, Any]) -> grpc.RpcError:
    req = json_format.ParseDict(body, pb.CompleteRequest())
    with pytest.raises(grpc.RpcError) as info:
        stub.Complete(req, timeout=10)
    return info.value


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": "a", "content_parts": [{"text": "b"}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content_parts": [{"type": "image_url"}]}]}, "messages[0].content_parts[0]"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"temperature": 3.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"n": 0}, "n"),
        ({"top_logprobs": 50}, "top_logprobs"),
        ({"logit_bias": {"50256": 300}}, "logit_bias[50256]"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
        ({"tools": [{"function": {"name": "f", "parameters": {"type": "string"}}}]},
         "tools[0].function.parameters.type"),
        ({"tools": [{"function": {"name": "f", "parameters": {"type": "object", "properties": [1, 2]}}}]},
         "tools[0].function.parameters.properties"),
        ({"tool_choice": {"function": {"name": "missing"}}}, "tool_choice.function.name"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
         "response_format.json_schema.name"),
        ({"api_base": "ftp://example"}, "api_base"),
        ({"timeout": -1}, "timeout"),
        ({"thinking": {"type": "sometimes"}}, "thinking.type"),
        ({"web_search_options": {"search_context_size": "huge"}}, "web_search_options.search_context_size"),
        ({"web_search_options": {"user_location": {"type": "exact"}}}, "web_search_options.user_location.type"),
    ],
)
def test_invalid_request_names_the_field(
    stub: pb_grpc.CompletionServiceStub, patch: dict[str, Any], field: str
) -> None:
    err = _complete(stub, {**GOOD, **patch})
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, fields = _violations(err)
    assert reason == "INVALID_REQUEST"
    assert field in fields
    assert field in (err.details() or "") or field == fields[0] or len(fields) > 1


def test_stream_request_fields_are_prefixed(stub: pb_grpc.CompletionServiceStub) -> None:
    req = pb.StreamCompleteRequest(request=json_format.ParseDict({**GOOD, "temperature": 9}, pb.CompleteRequest()))
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamComplete(req, timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(info.value)[1] == ["request.temperature"]


def test_unknown_provider_names_known_ones(stub: pb_grpc.CompletionServiceStub) -> None:
    err = _complete(stub, {**GOOD, "model": "nosuch/model"})
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(err) == ("UNKNOWN_PROVIDER", ["model"])
    assert "mock" in (err.details() or "") and "openai" in (err.details() or "")


def test_unsupported_parameter_is_rejected_then_dropped(start_gateway: Any) -> None:
    gw = start_gateway()
    body = {**GOOD, "thinking": {"type": "enabled", "budget_tokens": 2048}, "model": "openai/gpt-4o",
            "api_key": "sk-test", "api_base": "http://127.0.0.1:9"}
    with grpc.insecure_channel(gw.address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)
        req = json_format.ParseDict(body, pb.CompleteRequest())
        with pytest.raises(grpc.RpcError) as info:
            stub.Complete(req, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _violations(info.value) == ("UNSUPPORTED_PARAMETER", ["thinking"])
        req.drop_params = True
        with pytest.raises(grpc.RpcError) as info:
            stub.Complete(req, timeout=10)
        # Dropped: the call now goes upstream (nothing listens on port 9) instead of being rejected.
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("key", ["stream", "model", "messages", "stream_options"])
def test_extra_body_cannot_override_what_the_gateway_sets(stub: pb_grpc.CompletionServiceStub, key: str) -> None:
    err = _complete(stub, {**GOOD, "extra_body": {key: True}})
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(err)[1] == [f"extra_body.{key}"]


def test_unknown_fallback_provider_names_the_fallback(stub: pb_grpc.CompletionServiceStub) -> None:
    err = _complete(stub, {**GOOD, "fallbacks": ["mock/ok", "nosuch/model"]})
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(err) == ("UNKNOWN_PROVIDER", ["fallbacks[1]"])
