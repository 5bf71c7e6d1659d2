"""Stream usage without include_usage: the provider's usage rides as ``hidden_usage`` on the last finish
chunk (LiteLLM's hidden usage), so stream_chunk_builder and cost still see it while the caller gets
OpenAI's chunks: no ``usage`` field, no extra chunk."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import llmrpc
import pytest
from llmrpc.v1 import chat_pb2, usage_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc
from llmrpc_server.hidden_usage import UsageHider

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream, anthropic

M = [{"role": "user", "content": "hello there"}]


def chunk(text: str | None = None, finish: str | None = None, usage: int | None = None) -> pb.StreamCompleteResponse:
    out = pb.StreamCompleteResponse(id="c")
    if text is not None or finish is not None:
        choice = out.choices.add(index=0, delta=chat_pb2.Delta())
        if text is not None:
            choice.delta.content = text
        if finish is not None:
            choice.finish_reason = finish
    if usage is not None:
        out.usage.CopyFrom(usage_pb2.Usage(total_tokens=usage))
        out.metadata.cost_usd = 0.5
    return out


def run(chunks: list[pb.StreamCompleteResponse]) -> list[pb.StreamCompleteResponse]:
    hider = UsageHider()
    out = [o for c in chunks for o in hider.add(c)]
    return out + list(hider.finish())


def test_usage_moves_onto_the_finish_chunk() -> None:
    usage_chunk = chunk(usage=12)
    out = run([chunk("a"), chunk("b"), chunk(finish="stop"), usage_chunk])
    assert [o.choices[0].delta.content for o in out[:2]] == ["a", "b"]
    assert len(out) == 3 and out[2].choices[0].finish_reason == "stop"
    assert not out[2].HasField("usage") and out[2].hidden_usage.total_tokens == 12
    assert out[2].metadata.cost_usd == 0.5
    assert usage_chunk.HasField("usage")  # the input (maybe shared with the cache) is not mutated


def test_streams_without_usage_or_without_finish_pass_through() -> None:
    plain = [chunk("a"), chunk(finish="stop")]
    assert run(plain) == plain
    alone = run([chunk("a"), chunk(usage=3)])
    assert len(alone) == 2 and alone[1].hidden_usage.total_tokens == 3 and not alone[1].choices
    held = run([chunk(finish="length"), chunk("late")])  # a finish chunk not last is released in order
    assert [o.choices[0].finish_reason or o.choices[0].delta.content for o in held] == ["length", "late"]


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[FakeUpstream, GatewayThread]]:
    with FakeUpstream(default=anthropic.default_handler) as up:
        env = {"ANTHROPIC_API_BASE": up.url, "ANTHROPIC_API_KEY": "k"}
        with GatewayThread(gateway_settings(env, cache_default=True)) as gw:
            yield up, gw


def raw_stream(address: str, include_usage: bool, text: str) -> list[pb.StreamCompleteResponse]:
    req = pb.StreamCompleteRequest(request=pb.CompleteRequest(
        model="anthropic/claude-sonnet-4-5", messages=[chat_pb2.Message(role="user", content=text)]))
    req.stream_options.include_usage = include_usage
    with grpc.insecure_channel(address) as channel:
        return list(pb_grpc.CompletionServiceStub(channel).StreamComplete(req))


@pytest.mark.parametrize("replay", [False, True])  # live, then the same answer from the response cache
def test_over_the_wire_and_from_the_cache(gateway: tuple[FakeUpstream, GatewayThread], replay: bool) -> None:
    _, gw = gateway
    hidden = raw_stream(gw.address, False, "cache me")
    shown = raw_stream(gw.address, True, "cache me")
    assert all(not c.HasField("usage") for c in hidden)
    assert len(hidden) == len(shown) - 1
    assert hidden[-1].choices[0].finish_reason == "stop" and hidden[-1].hidden_usage.total_tokens == 12
    assert shown[-1].usage.total_tokens == 12 and not any(c.HasField("hidden_usage") for c in shown)


def test_stream_chunk_builder_and_cost_see_hidden_usage(gateway: tuple[FakeUpstream, GatewayThread]) -> None:
    _, gw = gateway
    chunks = list(llmrpc.Client(gw.address).completion(model="anthropic/claude-sonnet-4-5", messages=M,
                                                        stream=True, caching=False))
    assert all(c.usage is None for c in chunks)
    built = llmrpc.stream_chunk_builder(chunks)
    assert (built.usage.prompt_tokens, built.usage.completion_tokens, built.usage.total_tokens) == (5, 7, 12)
    assert built._hidden_params["response_cost"] == pytest.approx(5 * 3e-6 + 7 * 15e-6)
    assert "usage" not in built._hidden_params
