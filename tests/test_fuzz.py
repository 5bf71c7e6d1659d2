"""Bad input never breaks the server: hypothesis-generated requests, and raw bytes on the wire.

Every call must end OK or INVALID_ARGUMENT carrying a ``BadRequest`` whose violations name a
field; never INTERNAL or UNKNOWN, never a hang (every call has a short deadline), and the server
keeps serving afterwards. Models go to the in-process ``mock/`` provider (or fail validation), and
``api_base`` is only ever invalid, so no example can reach the network. 2,300 examples in all
(``LLMRPC_FUZZ_SCALE=10`` runs ten times as many).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from tests.support import GatewayThread, gateway_settings

DEADLINE = 5.0  # seconds per call: a hang fails the example instead of the suite
SERVICE = "/llmrpc.v1.CompletionService/"
SCALE = float(os.environ.get("LLMRPC_FUZZ_SCALE", "1"))  # e.g. 10 for a deeper run than CI's


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayThread]:
    with GatewayThread(gateway_settings()) as gw:
        yield gw


@pytest.fixture(scope="module")
def channel(gateway: GatewayThread) -> Iterator[grpc.Channel]:
    size = 64 * 1024 * 1024
    options = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
    with grpc.insecure_channel(gateway.address, options=options) as ch:
        yield ch
    with grpc.insecure_channel(gateway.address) as ch:  # still serving after all of it
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


# ---- strategies ---------------------------------------------------------------------------------
# A request is a valid base plus up to three perturbations, so examples reach every layer (about
# half are answered OK by the mock provider) instead of all failing the first validation rule.

HUGE = "x" * 200_000
texts = st.one_of(st.text(max_size=30), st.sampled_from(["", " ", "\x00", "é\u2028🙂", HUGE]))
good_names = st.sampled_from(["get_weather", "f", "a.b:c-d", "x" * 128])
names = st.one_of(good_names, st.sampled_from(["", "bad name", "x" * 129]), st.text(max_size=12))
floats = st.floats(allow_nan=True, allow_infinity=True)
int32 = st.integers(-(2**31), 2**31 - 1)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), floats, st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
schema_keys = st.sampled_from(["type", "properties", "required", "items", "enum", "minimum", "$ref", "x"])
schemas = st.dictionaries(st.one_of(schema_keys, st.text(max_size=6)), json_values, max_size=4)
# Keys the mock upstream (and real ones) read from the body, so extra_body can clash with them. Not
# "stream": extra_body is sent verbatim, and a stream answering a unary call is PROVIDER_BAD_RESPONSE
# (UNAVAILABLE), as it is for the OpenAI SDK.
body_keys = st.sampled_from(["n", "model", "messages", "mock_response", "mock_delay", "tools",
                             "stream_options", "temperature", "x"])
good_models = st.builds(lambda name: f"mock/{name}", st.text(min_size=1, max_size=20))
bad_models = st.one_of(
    st.sampled_from(["", " ", "mock/", "/x", "nope/x", "gpt", "mock//", "mock/ x", "mock/\x00"]),
    st.text(max_size=12).filter(lambda m: "/" not in m and not m.startswith(
        ("gpt-", "o", "chatgpt-", "text-", "davinci", "babbage", "ft:", "claude-", "gemini-"))),
)
roles = st.one_of(st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]),
                  st.text(max_size=8))


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out


@st.composite
def content_parts(draw: st.DrawFn) -> chat_pb2.ContentPart:
    kind = draw(st.sampled_from(["text", "image_url", "input_audio", "file", "refusal", None]))
    part = chat_pb2.ContentPart(type=draw(st.one_of(st.just(kind or ""), st.text(max_size=8))))
    if kind == "text":
        part.text = draw(texts)
    elif kind == "image_url":
        part.image_url.url = draw(st.sampled_from(["", "data:image/png;base64,AAAA", "https://x/y.png"]))
    elif kind == "input_audio":
        part.input_audio.data = draw(texts)
    elif kind == "file":
        part.file.SetInParent()
        if draw(st.booleans()):
            part.file.file_id = draw(texts)
    elif kind == "refusal":
        part.refusal = draw(texts)
    return part


@st.composite
def wild_messages(draw: st.DrawFn) -> chat_pb2.Message:
    msg = chat_pb2.Message(role=draw(roles))
    shape = draw(st.sampled_from(["content", "parts", "both", "none"]))
    if shape in ("content", "both"):
        msg.content = draw(texts)
    if shape in ("parts", "both"):
        msg.content_parts.extend(draw(st.lists(content_parts(), max_size=3)))
    if draw(st.booleans()):
        msg.tool_call_id = draw(texts)
    if draw(st.booleans()):
        msg.name = draw(names)
    for _ in range(draw(st.integers(0, 2))):
        msg.tool_calls.add(id=draw(texts), type=draw(st.sampled_from(["function", "", "x"])),
                           function=chat_pb2.FunctionCall(name=draw(names), arguments=draw(texts)))
    if draw(st.booleans()):
        msg.thinking_blocks.add(type=draw(st.sampled_from(["thinking", "redacted_thinking", "x"])),
                                thinking=draw(texts))
    return msg


def base_request(draw: st.DrawFn) -> pb.CompleteRequest:
    """A valid request: a conversation the mock answers, with some valid optional fields."""
    req = pb.CompleteRequest(model=draw(good_models))
    req.messages.add(role=draw(st.sampled_from(["system", "developer"])), content=draw(texts))
    req.messages.add(role="user", content=draw(texts))
    if draw(st.booleans()):
        call = req.messages.add(role="assistant").tool_calls.add(id="call_1", type="function")
        call.function.name, call.function.arguments = draw(good_names), draw(texts)
        req.messages.add(role="tool", tool_call_id="call_1", content=draw(texts))
        req.messages.add(role="user", content_parts=[chat_pb2.ContentPart(type="text", text=draw(texts))])
    if draw(st.booleans()):
        req.temperature, req.top_p = draw(st.floats(0, 2)), draw(st.floats(0, 1))
    if draw(st.booleans()):
        req.n, req.max_tokens, req.seed = draw(st.integers(1, 3)), draw(st.integers(1, 10**6)), draw(int32)
    if draw(st.booleans()):
        tool = req.tools.add(type="function")
        tool.function.name = draw(good_names)
        tool.function.parameters.update({"type": "object", "properties": {"city": {"type": "string"}}})
        req.tool_choice.mode = chat_pb2.TOOL_CHOICE_MODE_AUTO
    return req


def perturb_model(draw: st.DrawFn, req: pb.CompleteRequest) -> None:
    req.model = draw(st.one_of(bad_models, good_models))


def perturb_messages(draw: st.DrawFn, req: pb.CompleteRequest) -> None:
    wild = draw(st.lists(wild_messages(), max_size=3))
    if draw(st.booleans()):
        del req.messages[:]
    req.messages.extend(wild)


def perturb_numbers(draw: st.DrawFn, req: pb.CompleteRequest) -> None:
    """NaN, infinities, negatives and int32 extremes in every numeric knob."""
    for name in draw(st.lists(st.sampled_from(["temperature", "top_p", "presence_penalty", "frequency_penalty"]),
                              max_size=2)):
        setattr(req, name, draw(floats))
    for name in draw(st.lists(st.sampled_from(["n", "max_tokens", "max_completion_tokens", "top_logprobs",
                                               "num_retries"]), max_size=2)):
        setattr(req, name, draw(st.one_of(int32, st.integers(-2, 12))))
    if draw(st.booleans()):
        req.timeout = draw(st.one_of(st.floats(1, 86_400), st.sampled_from([0.0, -1.0, math.nan, math.inf, 1e9])))
    for token, bias in draw(st.dictionaries(st.text(max_size=6), int32, max_size=2)).items():
        req.logit_bias[token] = bias
    if draw(st.booleans()):
        req.cache.ttl = draw(floats)


def perturb_tools(draw: st.DrawFn, req: pb.CompleteRequest) -> None:
    for _ in range(draw(st.integers(1, 2))):
        tool = req.tools.add(type=draw(st.sampled_from(["function", "", "retrieval"])))
        tool.function.name = draw(names)
        if draw(st.booleans()):
            tool.function.parameters.CopyFrom(struct(draw(schemas)))
    choice = draw(st.sampled_from(["mode", "function"]))
    if choice == "mode":  # proto3 enums are open: unknown numbers arrive as they are
        req.tool_choice.mode = draw(st.integers(-5, 1000))  # type: ignore[assignment]
    else:
        req.tool_choice.function.name = draw(names)


def perturb_enums(draw: st.DrawFn, req: pb.CompleteRequest) -> None:
    """String-valued enums with values that do not exist."""
    field = draw(st.sampled_from(["reasoning_effort", "thinking", "response_format", "stop", "modalities"]))
    if field == "reasoning_effort":
        req.reasoning_effort = draw(st.one_of(st.sampled_from(["low", "high", "max"]), st.text(max_size=8)))
    elif field == "thinking":
        req.thinking.type = draw(st.one_of(st.sampled_from(["enabled", "disabled"]), st.text(max_size=8)))
        req.thinking.budget_tokens = draw(int32)
    elif field == "response_format":
        req.response_format.type = draw(st.one_of(st.sampled_from(["text", "json_object", "json_schema"]),
                                                  st.text(max_size=8)))
        if draw(st.booleans()):
            req.response_format.json_schema.name = draw(names)
            req.response_format.json_schema.schema.CopyFrom(struct(draw(schemas)))
    elif field == "stop":
        req.stop.extend(draw(st.lists(texts, min_size=1, max_size=3)))
    else:
        req.modalities.extend(draw(st.lists(st.sampled_from(["text", "audio", "x"]), min_size=1, max_size=2)))


def perturb_routing(draw: st.DrawFn, req: pb.CompleteRequest) -> None:
    for name in draw(st.lists(st.sampled_from(["fallbacks", "context_window_fallbacks", "content_policy_fallbacks"]),
                              max_size=2)):
        getattr(req, name).extend(draw(st.lists(st.one_of(good_models, bad_models), min_size=1, max_size=2)))
    if draw(st.booleans()):  # never a usable URL: nothing may leave the machine
        req.api_base = draw(st.sampled_from(["", "ftp://x", "not a url", " http://x", "http:/x", "mock"]))
    if draw(st.booleans()):
        req.api_key = draw(texts)
    if draw(st.booleans()):
        req.mock_response = draw(st.text(max_size=30))


def perturb_passthrough(draw: st.DrawFn, req: pb.CompleteRequest) -> None:
    """extra_body keys that clash with what the upstream reads, headers, metadata."""
    if draw(st.booleans()):
        extra = draw(st.dictionaries(st.one_of(body_keys, st.text(max_size=6)), json_values, min_size=1, max_size=3))
        if isinstance(extra.get("mock_delay"), float) and 0 < extra["mock_delay"] <= 600:
            extra["mock_delay"] = 0.0  # a valid delay only makes the example slow
        req.extra_body.CopyFrom(struct(extra))
    for key, value in draw(st.dictionaries(st.text("abcxyz-", min_size=1, max_size=8), st.text(max_size=10),
                                           max_size=2)).items():
        req.extra_headers[key] = value
    if draw(st.booleans()):
        req.metadata.CopyFrom(struct(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))))
    if draw(st.booleans()):
        req.drop_params = draw(st.booleans())


PERTURBATIONS = [perturb_model, perturb_messages, perturb_numbers, perturb_tools, perturb_enums,
                 perturb_routing, perturb_passthrough]


@st.composite
def complete_requests(draw: st.DrawFn) -> pb.CompleteRequest:
    req = base_request(draw)
    for perturb in draw(st.lists(st.sampled_from(PERTURBATIONS), max_size=3)):
        perturb(draw, req)
    return req


# ---- checks -------------------------------------------------------------------------------------


def assert_acceptable(err: grpc.RpcError | None) -> None:
    """OK, or INVALID_ARGUMENT whose BadRequest names every offending field."""
    if err is None:
        return
    code = err.code()  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code}: {err.details()}"  # type: ignore[attr-defined]
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "INVALID_ARGUMENT without rich details"
    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(bad.field_violations)
    assert violations and all(v.field and v.description for v in violations), status


def call_unary(channel: grpc.Channel, req: pb.CompleteRequest) -> grpc.RpcError | None:
    try:
        pb_grpc.CompletionServiceStub(channel).Complete(req, timeout=DEADLINE)
    except grpc.RpcError as err:
        return err
    return None


def call_stream(channel: grpc.Channel, req: pb.StreamCompleteRequest) -> grpc.RpcError | None:
    try:
        for _ in pb_grpc.CompletionServiceStub(channel).StreamComplete(req, timeout=DEADLINE):
            pass
    except grpc.RpcError as err:
        return err
    return None


def call_raw(channel: grpc.Channel, method: str, data: bytes) -> grpc.RpcError | None:
    """Bytes as the serialized request, exactly as a broken client would send them."""
    try:
        if method == "StreamComplete":
            for _ in channel.unary_stream(SERVICE + method)(data, timeout=DEADLINE):
                pass
        else:
            channel.unary_unary(SERVICE + method)(data, timeout=DEADLINE)
    except grpc.RpcError as err:
        return err
    return None


# ---- the fuzzers (examples: 900 + 600 + 200 + 400 + 200 = 2,300) ---------------------------------


@settings(FUZZ, max_examples=examples(900))
@given(req=complete_requests())
def test_complete(channel: grpc.Channel, req: pb.CompleteRequest) -> None:
    assert_acceptable(call_unary(channel, req))


@settings(FUZZ, max_examples=examples(600))
@given(req=complete_requests(), include_usage=st.booleans())
def test_stream_complete(channel: grpc.Channel, req: pb.CompleteRequest, include_usage: bool) -> None:
    if not req.HasField("mock_response"):  # the mock streams an echo 4 characters a chunk: keep it short
        req.mock_response = "a streamed answer"
    stream_req = pb.StreamCompleteRequest(request=req)
    stream_req.stream_options.include_usage = include_usage
    assert_acceptable(call_stream(channel, stream_req))


@settings(FUZZ, max_examples=examples(200))
@given(model=st.one_of(good_models, bad_models, st.text(max_size=40)))
def test_get_supported_params(channel: grpc.Channel, model: str) -> None:
    try:
        pb_grpc.CompletionServiceStub(channel).GetSupportedParams(pb.GetSupportedParamsRequest(model=model),
                                                                 timeout=DEADLINE)
    except grpc.RpcError as err:
        assert_acceptable(err)


@settings(FUZZ, max_examples=examples(400))
@given(data=st.binary(max_size=512), method=st.sampled_from(["Complete", "StreamComplete", "GetSupportedParams"]))
def test_random_bytes(channel: grpc.Channel, data: bytes, method: str) -> None:
    assert_acceptable(call_raw(channel, method, data))


VALID = pb.CompleteRequest(model="mock/echo", messages=[chat_pb2.Message(role="user", content="hi")],
                           temperature=0.5).SerializeToString()


@settings(FUZZ, max_examples=examples(200))
@given(flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.integers(0, len(VALID)), method=st.sampled_from(["Complete", "StreamComplete"]))
def test_corrupted_valid_request(channel: grpc.Channel, flips: list[tuple[int, int]], cut: int,
                                 method: str) -> None:
    """A real request with bytes overwritten and the tail cut: invalid UTF-8, bad tags, lengths."""
    data = bytearray(VALID)
    for index, value in flips:
        data[index] = value
    body = bytes(data[:cut])
    if method == "StreamComplete":
        body = b"\x0a" + len(body).to_bytes(1, "little") + body if len(body) < 128 else body
    assert_acceptable(call_raw(channel, method, body))
