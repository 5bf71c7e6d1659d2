"""LiteLLM's own keyword arguments: mapped to what they mean (retries, timeouts, headers, dropped
parameters, mocked tool calls, the OpenAI organization) or dropped, never put in a provider's body;
the gateway drops them from ``extra_body`` too, for callers in any language."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import llmrpc
import pytest
from google.protobuf import json_format
from llmrpc._convert import build_request
from llmrpc._litellm_params import LITELLM_OWN_PARAMS
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream, gemini, openai

M = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[FakeUpstream, FakeUpstream, GatewayThread]]:
    with FakeUpstream(default=openai.default_handler) as oa, FakeUpstream(default=gemini.default_handler) as ge:
        settings = gateway_settings({"OPENAI_API_BASE": oa.url, "OPENAI_API_KEY": "k", "GROQ_API_BASE": oa.url,
                                     "GROQ_API_KEY": "k", "GEMINI_API_BASE": ge.url, "GEMINI_API_KEY": "k"})
        with GatewayThread(settings) as gw:
            yield oa, ge, gw


def test_the_list_covers_the_issue_s_names() -> None:
    for name in ("organization", "tags", "additional_drop_params", "litellm_call_id", "input_cost_per_token",
                 "no-log", "mock_timeout", "allowed_openai_params", "litellm_trace_id", "mock_tool_calls"):
        assert name in LITELLM_OWN_PARAMS
    for name in ("num_retries", "max_retries", "request_timeout", "stream_timeout", "metadata", "api_base"):
        assert name not in LITELLM_OWN_PARAMS


def test_client_maps_litellm_aliases() -> None:
    req = build_request({"model": "openai/x", "messages": M, "max_retries": 3, "request_timeout": 12,
                         "headers": {"X-A": "1"}, "extra_headers": {"X-B": "2"}, "tags": ["t"],
                         "litellm_call_id": "c", "top_k": 4, "seed": 1, "additional_drop_params": ["seed"]})
    assert (req.num_retries, req.timeout) == (3, 12)
    assert dict(req.extra_headers) == {"X-A": "1", "X-B": "2"}
    assert dict(req.extra_body) == {"top_k": 4} and not req.HasField("seed")
    both = build_request({"model": "m", "messages": M, "num_retries": 1, "max_retries": 5, "timeout": 3,
                          "request_timeout": 9, "stream_timeout": 7})
    assert (both.num_retries, both.timeout) == (1, 3)  # the real field wins
    streamed = build_request({"model": "m", "messages": M, "stream": True, "stream_timeout": 7, "request_timeout": 9})
    assert streamed.timeout == 7
    unary = build_request({"model": "m", "messages": M, "stream_timeout": 7})
    assert unary.timeout == 0 and not unary.HasField("extra_body")  # unary: not used, not forwarded


def test_the_gateway_never_forwards_litellm_names_in_extra_body(env: tuple[FakeUpstream, FakeUpstream,
                                                                            GatewayThread]) -> None:
    oa, _, gw = env
    req = pb.CompleteRequest(model="openai/gpt-4o")
    json_format.ParseDict({"messages": M, "extra_body": {"tags": ["a"], "litellm_call_id": "x", "no-log": True,
                                                         "mock_tool_calls": [], "top_k": 3}}, req)
    with grpc.insecure_channel(gw.address) as channel:
        pb_grpc.CompletionServiceStub(channel).Complete(req)
    assert oa.requests[-1].json() == {"model": "gpt-4o", "messages": M, "top_k": 3}


def test_max_retries_retries(env: tuple[FakeUpstream, FakeUpstream, GatewayThread]) -> None:
    oa, _, gw = env
    oa.enqueue(openai.rate_limited(retry_after=0), openai.chat_completion("ok"))
    resp = llmrpc.Client(gw.address).completion(model="openai/gpt-4o", messages=M, max_retries=1)
    assert resp.choices[0].message.content == "ok" and resp._hidden_params["attempts"] == 2
    assert "max_retries" not in oa.requests[-1].json()


def test_user_is_dropped_where_the_provider_lacks_it(env: tuple[FakeUpstream, FakeUpstream, GatewayThread]) -> None:
    _, ge, gw = env
    client = llmrpc.Client(gw.address)
    resp = client.completion(model="gemini/gemini-2.5-flash", messages=M, user="u-1", drop_params=False)
    assert resp.choices[0].message.content == "echo: hi" and "u-1" not in ge.requests[-1].body.decode()
    with pytest.raises(llmrpc.UnsupportedParamsError):  # other unsupported parameters still fail
        client.completion(model="gemini/gemini-2.5-flash", messages=M, user="u-1", logit_bias={"1": 1})


def test_organization_header_only_for_openai(env: tuple[FakeUpstream, FakeUpstream, GatewayThread]) -> None:
    oa, _, gw = env
    client = llmrpc.Client(gw.address)
    client.completion(model="openai/gpt-4o", messages=M, organization="org-1")
    assert oa.requests[-1].headers["openai-organization"] == "org-1"
    assert "organization" not in oa.requests[-1].json()
    client.completion(model="groq/llama", messages=M, organization="org-1")
    assert "openai-organization" not in oa.requests[-1].headers


def test_mock_tool_calls(mock_gateway: GatewayThread) -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]
    resp = llmrpc.Client(mock_gateway.address).completion(model="openai/gpt-4o", messages=M, mock_tool_calls=calls)
    call = resp.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == ("c1", "f", '{"x":1}')
    assert resp.choices[0].message.content == "This is a mock request"


def test_missing_key_message_points_at_the_gateway() -> None:
    with GatewayThread(gateway_settings()) as gw, pytest.raises(llmrpc.AuthenticationError) as info:
        llmrpc.Client(gw.address).completion(model="openai/gpt-4o", messages=M)
    assert "OPENAI_API_KEY" in str(info.value) and "gateway" in str(info.value)
