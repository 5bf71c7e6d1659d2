"""CountTokens and GetModelInfo: offline token counts and model knowledge from the gateway, over the raw
stub (any language) and through LiteLLM's helpers in ``llmrpc``."""

from __future__ import annotations

import grpc
import llmrpc
import pytest
from google.protobuf import json_format
from grpc_status import rpc_status
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from tests.support import GatewayThread

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there friend", "name": "bob"}]


def test_count_tokens_over_the_raw_stub(stub: pb_grpc.CompletionServiceStub) -> None:
    req = pb.CountTokensRequest(model="openai/gpt-4o")
    json_format.ParseDict({"messages": MSGS}, req)
    reply = stub.CountTokens(req)
    # 3 per message + role + content (+ name and 1) + 3 to prime the reply, o200k_base.
    assert (reply.prompt_tokens, reply.tokenizer) == (19, "o200k_base")
    text = stub.CountTokens(pb.CountTokensRequest(model="anthropic/claude-sonnet-4-5", text="hello there friend"))
    assert (text.prompt_tokens, text.tokenizer) == (3, "cl100k_base")
    unknown = stub.CountTokens(pb.CountTokensRequest(model="nosuch/model", text="hello there friend"))
    assert unknown.tokenizer == "cl100k_base" and unknown.prompt_tokens == 3


def test_count_tokens_counts_tool_calls_and_tools(stub: pb_grpc.CompletionServiceStub) -> None:
    plain = stub.CountTokens(pb.CountTokensRequest(model="gpt-4o", messages=[chat_pb2.Message(role="user",
                                                                                               content="hi")]))
    call = chat_pb2.ToolCall(id="c1", function=chat_pb2.FunctionCall(name="get_weather", arguments='{"city":"P"}'))
    tool = chat_pb2.Tool(function=chat_pb2.FunctionDefinition(name="get_weather", description="Weather"))
    more = stub.CountTokens(pb.CountTokensRequest(
        model="gpt-4o", messages=[chat_pb2.Message(role="user", content="hi"),
                                  chat_pb2.Message(role="assistant", tool_calls=[call])], tools=[tool]))
    assert more.prompt_tokens > plain.prompt_tokens + 10


def test_get_model_info_over_the_raw_stub(stub: pb_grpc.CompletionServiceStub) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(model="anthropic/claude-sonnet-4-5")).model_info
    assert (info.provider, info.provider_model, info.mode) == ("anthropic", "claude-sonnet-4-5", "chat")
    assert info.max_input_tokens == 200_000
    assert info.input_cost_per_token == pytest.approx(3e-6) and info.output_cost_per_token == pytest.approx(15e-6)
    assert info.cache_read_input_token_cost == pytest.approx(0.3e-6)
    assert info.supports_reasoning and info.supports_vision and info.supports_prompt_caching
    assert "thinking" in info.supported_openai_params
    bare = stub.GetModelInfo(pb.GetModelInfoRequest(model="gpt-4o")).model_info
    assert bare.provider == "openai" and bare.supports_function_calling and not bare.supports_reasoning
    local = stub.GetModelInfo(pb.GetModelInfoRequest(model="ollama_chat/llama3")).model_info
    assert local.provider == "ollama_chat" and not local.HasField("input_cost_per_token")
    assert not local.HasField("supports_vision")  # unknown stays unset, never guessed


@pytest.mark.parametrize(("model", "field"), [("", "model"), ("nosuch/model", "model")])
def test_get_model_info_rejects_bad_models(stub: pb_grpc.CompletionServiceStub, model: str, field: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelInfo(pb.GetModelInfoRequest(model=model))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(info.value)
    assert status is not None and field in status.message


def test_count_tokens_is_bounded(stub: pb_grpc.CompletionServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.CountTokens(pb.CountTokensRequest(model="gpt-4o", text="x" * (17 << 20)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_litellm_helpers(mock_gateway: GatewayThread) -> None:
    client = llmrpc.Client(mock_gateway.address)
    assert llmrpc.token_counter(model="gpt-4o", messages=MSGS, client=client) == 19
    assert llmrpc.token_counter(model="gpt-4o", text=["hello ", "there friend"], client=client) == 3
    info = llmrpc.get_model_info("gpt-4o", client=client)
    assert info["litellm_provider"] == "openai" and info["mode"] == "chat"
    assert info["max_input_tokens"] == 128_000 and info["input_cost_per_token"] == pytest.approx(2.5e-6)
    assert llmrpc.supports_function_calling("gpt-4o", client=client)
    assert llmrpc.supports_vision("anthropic/claude-sonnet-4-5", client=client)
    assert llmrpc.supports_reasoning("gemini/gemini-2.5-flash", client=client)
    assert not llmrpc.supports_reasoning("gpt-4o", client=client)
    assert not llmrpc.supports_vision("ollama_chat/llama3", client=client)  # unknown: False, as LiteLLM
    with pytest.raises(Exception, match="isn't mapped yet"):
        llmrpc.get_model_info("ollama_chat/llama3", client=client)
    assert llmrpc.get_llm_provider("claude-sonnet-4-5", client=client) == ("claude-sonnet-4-5", "anthropic", None,
                                                                           None)
    assert llmrpc.get_llm_provider("m", custom_llm_provider="groq", api_base="http://x", client=client) == (
        "m", "groq", None, "http://x")
    with pytest.raises(ValueError):
        llmrpc.token_counter(model="gpt-4o", client=client)


def test_completion_cost(mock_gateway: GatewayThread) -> None:
    client = llmrpc.Client(mock_gateway.address)
    # mock_response is priced as the model it names: 10 prompt + 20 completion tokens of gpt-4o.
    resp = client.completion(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}], mock_response="x")
    expected = 10 * 2.5e-6 + 20 * 10e-6
    assert resp._hidden_params["response_cost"] == pytest.approx(expected)
    assert llmrpc.completion_cost(completion_response=resp, client=client) == pytest.approx(expected)
    resp._hidden_params["response_cost"] = None  # computed from usage and the model's prices instead
    assert llmrpc.completion_cost(completion_response=resp, model="gpt-4o", client=client) == pytest.approx(expected)
    by_text = llmrpc.completion_cost(model="gpt-4o", prompt="hello there friend", completion="hi", client=client)
    assert by_text == pytest.approx(3 * 2.5e-6 + 1 * 10e-6)


def test_model_cost_is_a_lazy_view(mock_gateway: GatewayThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRPC_SERVER", mock_gateway.address)
    cost = llmrpc.model_cost
    assert cost["gpt-4o"]["input_cost_per_token"] == pytest.approx(2.5e-6)
    assert "gpt-4o" in cost and "gpt-4o" in list(cost)
    with pytest.raises(KeyError):
        cost["ollama_chat/llama3"]
