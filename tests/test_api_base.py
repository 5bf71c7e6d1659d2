"""``api_base`` must be a base URL, and nothing a caller names (model, deployment) can change the
path the adapters build on it. Through the real gateway and a fake upstream that records the exact
request target; plus the shared URL helper itself."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import llmrpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc
from llmrpc_server.providers.common import join_url, path_segment

from tests.support import GatewayThread
from tests.upstreams import FakeUpstream, gemini, openai

USER = [{"role": "user", "content": "hi"}]
StartGateway = Callable[..., GatewayThread]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=openai.default_handler) as up:
        yield up


@pytest.fixture
def stub(start_gateway: StartGateway) -> Iterator[pb_grpc.CompletionServiceStub]:
    gw = start_gateway(env={"OPENAI_API_KEY": "sk-server"})
    with grpc.insecure_channel(gw.address) as channel:
        yield pb_grpc.CompletionServiceStub(channel)


def _error_info(err: grpc.RpcError) -> tuple[str, dict[str, str], list[str]]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    reason, meta, fields = "", {}, []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, meta = info.reason, dict(info.metadata)
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return reason, meta, fields


def _bad_bases(port: int) -> list[str]:
    here = f"http://127.0.0.1:{port}"
    return [
        f"{here}/admin/users/delete?force=1&x=",  # the finding: a query swallows the path
        f"{here}/v1?",
        f"{here}/v1#frag",
        f"http://user:password@127.0.0.1:{port}/v1",
        f"http://token@127.0.0.1:{port}/v1",
        f"{here}/v1/../admin",
        f"{here}/./v1",
        f"{here}/v1/%zz",
        f"{here}/v 1",
        f"{here}/v1\r\nX-Injected: 1",
        f"{here}\\@evil.example/",
        "ftp://127.0.0.1/v1",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://",
        "http:///v1",
        "http://127.0.0.1:0/v1",
        "http://127.0.0.1:99999/v1",
        "http://127.0.0.1:port/v1",
        "http://exämple.com/v1",
        "",
        here + "/" + "a" * 2100,
    ]


def test_anything_but_a_base_url_is_refused_before_any_request(
    stub: pb_grpc.CompletionServiceStub, upstream: FakeUpstream
) -> None:
    for base in _bad_bases(int(upstream.url.rsplit(":", 1)[1].rstrip("/"))):
        body: dict[str, Any] = {"model": "openai/gpt-4o", "messages": USER, "api_base": base, "api_key": "sk-c",
                                "extra_headers": {"x-tag": "1"}, "extra_body": {"top_k": 1}}
        req = json_format.ParseDict(body, pb.CompleteRequest())
        with pytest.raises(grpc.RpcError) as info:
            stub.Complete(req, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, base
        reason, meta, fields = _error_info(info.value)
        assert (reason, meta["field"], fields) == ("INVALID_REQUEST", "api_base", ["api_base"]), base
        assert "internal" not in (info.value.details() or "").lower()
    assert upstream.requests == []


def test_a_stream_names_request_api_base(stub: pb_grpc.CompletionServiceStub, upstream: FakeUpstream) -> None:
    req = pb.CompleteRequest(model="openai/gpt-4o", api_base=upstream.url + "/x?y=1", api_key="k")
    req.messages.add(role="user", content="hi")
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamComplete(pb.StreamCompleteRequest(request=req), timeout=10))
    assert _error_info(info.value)[2] == ["request.api_base"]
    assert upstream.requests == []


@pytest.mark.parametrize("base_suffix", ["", "/", "/v1", "/v1/", "/deep/path_with-chars~:@!$&'()*+,;="])
def test_a_valid_base_gets_the_path_appended(start_gateway: StartGateway, upstream: FakeUpstream,
                                             base_suffix: str) -> None:
    with llmrpc.Client(start_gateway().address) as client:
        client.completion("openai/gpt-4o", USER, api_base=upstream.url + base_suffix, api_key="sk-c")
    expected = base_suffix.rstrip("/") + "/chat/completions"
    assert upstream.requests[-1].raw_path == expected


def test_ipv6_and_underscored_hosts_are_base_urls(stub: pb_grpc.CompletionServiceStub) -> None:
    """Refused hosts are refused by validation; these pass it and fail only to connect."""
    for base in ("http://[::1]:9/v1", "http://my_service:9/v1", "https://LOCALHOST:9"):
        req = pb.CompleteRequest(model="openai/gpt-4o", api_base=base, api_key="k", num_retries=0, timeout=5)
        req.messages.add(role="user", content="hi")
        with pytest.raises(grpc.RpcError) as info:
            stub.Complete(req, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, base


# ---- names in paths ------------------------------------------------------------------------------

EVIL = "../../admin?x=#y"


def test_an_azure_deployment_stays_one_path_segment(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    env = {"AZURE_API_KEY": "az-key", "AZURE_API_BASE": upstream.url}
    with llmrpc.Client(start_gateway(env=env).address) as client:
        client.completion(f"azure/{EVIL}", USER)
        client.completion("azure/ignored", USER, deployment_id="a/b")
    first, second = upstream.requests[-2:]
    assert first.raw_path == "/openai/deployments/..%2F..%2Fadmin%3Fx%3D%23y/chat/completions"
    assert first.query == {"api-version": "2024-10-21"}
    assert second.raw_path == "/openai/deployments/a%2Fb/chat/completions"


def test_a_gemini_model_stays_one_path_segment(start_gateway: StartGateway) -> None:
    with FakeUpstream(default=gemini.default_handler) as up:
        env = {"GEMINI_API_KEY": "g-key", "GEMINI_API_BASE": up.url}
        with llmrpc.Client(start_gateway(env=env).address) as client:
            with pytest.raises(llmrpc.NotFoundError):  # the fake finds no such method: the path stayed whole
                client.completion(f"gemini/{EVIL}", USER)
            client.completion("gemini/models/gemini-2.5-flash", USER)
            with pytest.raises(llmrpc.NotFoundError):  # the fake serves no tuned models
                list(client.completion("gemini/tunedModels/my-model", USER, stream=True))
        evil, plain, tuned = up.requests
        assert evil.raw_path == "/v1beta/models/..%2F..%2Fadmin%3Fx%3D%23y:generateContent"
        assert evil.query == {}
        assert plain.raw_path == "/v1beta/models/gemini-2.5-flash:generateContent"
        assert tuned.raw_path == "/v1beta/tunedModels/my-model:streamGenerateContent"
        assert tuned.query == {"alt": "sse"}


@pytest.mark.parametrize("model", ["azure/..", "gemini/.", "openai/.."])
def test_a_dot_segment_is_not_a_model(stub: pb_grpc.CompletionServiceStub, model: str) -> None:
    req = pb.CompleteRequest(model=model, api_key="k")
    req.messages.add(role="user", content="hi")
    with pytest.raises(grpc.RpcError) as info:
        stub.Complete(req, timeout=10)
    assert _error_info(info.value)[2] == ["model"]


def test_join_url_encodes_segments_and_keeps_a_configured_query() -> None:
    assert join_url("https://h/v1/", "chat", "completions") == "https://h/v1/chat/completions"
    assert join_url("https://h", "models", "a/b?c#d", suffix=":go") == "https://h/models/a%2Fb%3Fc%23d:go"
    assert join_url("https://u:p@h:8/p?sig=s%20x", "x", query={"alt": "sse"}) == "https://u:p@h:8/p/x?sig=s%20x&alt=sse"
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError):
            path_segment(bad)
