"""Caller ``extra_headers``: framing, hop-by-hop and proxy headers, invalid names and values, and
credential headers without the caller's own ``api_key`` are refused (INVALID_ARGUMENT naming the
header) before anything is sent; the rest reach the upstream, replacing the gateway's own headers
of the same name whatever their case."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import llmrpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from tests.support import GatewayThread
from tests.upstreams import FakeUpstream, anthropic, openai

SECRET = "sk-server-secret-000111"
StartGateway = Callable[..., GatewayThread]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=openai.default_handler) as up:
        yield up


@pytest.fixture
def gateway(start_gateway: StartGateway, upstream: FakeUpstream) -> GatewayThread:
    return start_gateway(env={"OPENAI_API_KEY": SECRET, "OPENAI_API_BASE": upstream.url})


@pytest.fixture
def stub(gateway: GatewayThread) -> Iterator[pb_grpc.CompletionServiceStub]:
    with grpc.insecure_channel(gateway.address) as channel:
        yield pb_grpc.CompletionServiceStub(channel)


def refused(stub: pb_grpc.CompletionServiceStub, headers: dict[str, str], **fields: str) -> list[tuple[str, str]]:
    """The BadRequest violations of a request with ``headers`` (which must be refused)."""
    req = pb.CompleteRequest(model="openai/gpt-4o", extra_headers=headers, **fields)
    req.messages.add(role="user", content="hi")
    with pytest.raises(grpc.RpcError) as info:
        stub.Complete(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(info.value)  # type: ignore[arg-type]
    assert status is not None
    out = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out = [(v.field, v.description) for v in bad.field_violations]
    return out


@pytest.mark.parametrize("name", [
    "Host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive", "Expect", "TE", "Trailer",
    "Upgrade", "Proxy-Authorization", "Proxy-Connection", "proxy-anything", "HTTP2-Settings", "host",
])
def test_framing_hop_by_hop_and_proxy_headers_are_refused(
    stub: pb_grpc.CompletionServiceStub, upstream: FakeUpstream, name: str
) -> None:
    violations = refused(stub, {name: "evil.example", "x-ok": "1"})
    assert [f for f, _ in violations] == [f'extra_headers["{name}"]']
    assert upstream.requests == []


@pytest.mark.parametrize("name", ["bad name", "x:y", "", "é", "x\r\ny", "(comment)", "a" * 300])
def test_a_name_that_is_not_a_token_is_refused(stub: pb_grpc.CompletionServiceStub, upstream: FakeUpstream,
                                               name: str) -> None:
    violations = refused(stub, {name: "v"})
    assert len(violations) == 1 and violations[0][0].startswith("extra_headers[")
    assert upstream.requests == []


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b", " lead-secret",
                                   "trail-secret\t", "é", "\x7f", "v" * 9000])
def test_a_value_that_is_not_a_field_value_is_refused_without_echoing_it(
    stub: pb_grpc.CompletionServiceStub, upstream: FakeUpstream, value: str
) -> None:
    violations = refused(stub, {"X-Tag": value})
    assert [f for f, _ in violations] == ['extra_headers["X-Tag"]']
    assert value.strip() not in violations[0][1]
    assert upstream.requests == []


@pytest.mark.parametrize("name", ["Authorization", "x-api-key", "API-Key", "x-goog-api-key"])
def test_credential_headers_need_the_callers_own_key(stub: pb_grpc.CompletionServiceStub, upstream: FakeUpstream,
                                                     name: str) -> None:
    violations = refused(stub, {name: "Bearer caller-token-123"})
    assert [f for f, _ in violations] == [f'extra_headers["{name}"]']
    assert "api_key" in violations[0][1]
    assert upstream.requests == []


def test_a_credential_header_with_the_callers_key_is_sent_and_the_server_key_is_not(
    gateway: GatewayThread, upstream: FakeUpstream
) -> None:
    with llmrpc.Client(gateway.address) as client:
        client.completion("openai/gpt-4o", [{"role": "user", "content": "hi"}], api_key="sk-caller",
                          extra_headers={"Authorization": "Bearer from-header"})
    sent = upstream.requests[-1]
    assert sent.headers["authorization"] == "Bearer from-header"
    assert SECRET not in str(sent.headers)


def test_headers_of_the_same_name_in_two_cases_are_refused(stub: pb_grpc.CompletionServiceStub) -> None:
    violations = refused(stub, {"X-Tag": "1", "x-tag": "2"})
    assert len(violations) == 1 and violations[0][0] in ('extra_headers["x-tag"]', 'extra_headers["X-Tag"]')


def test_count_and_size_are_bounded(stub: pb_grpc.CompletionServiceStub, upstream: FakeUpstream) -> None:
    assert [f for f, _ in refused(stub, {f"x-h{i}": "v" for i in range(65)})] == ["extra_headers"]
    big = {f"x-h{i}": "v" * 8000 for i in range(9)}  # each value allowed, 72,000 characters in all
    assert [f for f, _ in refused(stub, big)] == ["extra_headers"]
    assert upstream.requests == []


def test_ordinary_headers_reach_the_upstream_and_replace_ours_whatever_the_case(
    gateway: GatewayThread, upstream: FakeUpstream
) -> None:
    headers = {"X-Trace": "abc 123", "Content-Type": "application/json; charset=utf-8", "OpenAI-Beta": "x=1"}
    with llmrpc.Client(gateway.address) as client:
        client.completion("openai/gpt-4o", [{"role": "user", "content": "hi"}], extra_headers=headers)
    sent = upstream.requests[-1]
    assert sent.headers["x-trace"] == "abc 123" and sent.headers["openai-beta"] == "x=1"
    assert sent.headers["content-type"] == "application/json; charset=utf-8"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"


def test_anthropic_beta_headers_still_merge(start_gateway: StartGateway) -> None:
    with FakeUpstream(default=anthropic.default_handler) as up:
        gw = start_gateway(env={"ANTHROPIC_API_KEY": "ak", "ANTHROPIC_API_BASE": up.url})
        with llmrpc.Client(gw.address) as client:
            client.completion("anthropic/claude-sonnet-4-5", [{"role": "user", "content": "hi"}],
                              extra_headers={"Anthropic-Beta": "files-api-2025-04-14"})
        assert up.requests[-1].headers["anthropic-beta"] == "files-api-2025-04-14"
        assert up.requests[-1].headers["x-api-key"] == "ak"
