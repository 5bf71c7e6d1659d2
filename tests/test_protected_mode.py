"""Protected mode: with no caller authentication, only loopback callers are served (health and
reflection stay open), until --auth-tokens, --tls-client-ca or --allow-unauthenticated lift it.

The refused caller is real: this machine's own non-loopback address (a connection to it still
never leaves the host), found with iproute2; the tests that need one skip, saying so, without it."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from ipaddress import ip_address
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import llmrpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc
from llmrpc_server.config import Settings
from llmrpc_server.interceptors import ProtectedModeInterceptor, build_interceptors
from llmrpc_server.protected import (
    binds_loopback_only,
    is_local_peer,
    needs_peer_check,
    parse_peer,
    startup_warnings,
)

from tests.process_support import ServerProcess
from tests.support import free_port, wait_serving
from tests.tls_support import make_pki

MESSAGES = [{"role": "user", "content": "hi"}]
REQUEST = pb.CompleteRequest(model="mock/echo", messages=[chat_pb2.Message(role="user", content="hi")])


# --- the peer parser -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "local", "ip"),
    [
        ("ipv4:127.0.0.1:54321", True, "127.0.0.1"),
        ("ipv4:127.200.3.4:1", True, "127.200.3.4"),  # all of 127.0.0.0/8
        ("ipv4:127.0.0.1", True, "127.0.0.1"),  # no port
        ("ipv6:%5B::1%5D:48890", True, "::1"),  # what grpc 1.8x reports: brackets percent-encoded
        ("ipv6:[::1]:48890", True, "::1"),  # older form
        ("ipv6:%5B::ffff:127.0.0.1%5D:5", True, "::ffff:127.0.0.1"),  # IPv4-mapped loopback
        ("ipv6:%5B::ffff:127.9.9.9%5D:5", True, "::ffff:127.9.9.9"),
        ("unix:/run/llmrpc.sock", True, None),
        ("unix:", True, None),
        ("unix-abstract:llmrpc", True, None),
        ("ipv4:192.0.2.2:56116", False, "192.0.2.2"),
        ("ipv4:10.0.0.1:1", False, "10.0.0.1"),
        ("ipv4:0.0.0.0:1", False, "0.0.0.0"),
        ("ipv6:%5Bfd00::2%5D:40098", False, "fd00::2"),
        ("ipv6:%5B::ffff:10.1.2.3%5D:5", False, "::ffff:10.1.2.3"),  # IPv4-mapped, not loopback
        ("ipv6:%5B::%5D:5", False, "::"),
        ("ipv6:%5Bfe80::1%25eth0%5D:7", False, "fe80::1%eth0"),  # zone id
        ("ipv4:1.2.3.4:5:6", False, None),  # malformed: refused, never guessed
        ("ipv4:localhost:5", False, None),  # a name is not an address
        ("ipv4:", False, None),
        ("ipv6:::1:5", False, None),  # IPv6 without brackets is ambiguous
        ("ipv6:%5B127.0.0.1:5", False, None),
        ("ipx:127.0.0.1:5", False, None),
        ("127.0.0.1:5", False, None),
        ("", False, None),
        ("garbage", False, None),
    ],
)
def test_peer_parser(peer: str, local: bool, ip: str | None) -> None:
    parsed = parse_peer(peer)
    assert parsed.is_local is local
    assert is_local_peer(peer) is local
    assert parsed.ip == (ip_address(ip) if ip is not None else None)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("[::1]", True), ("::1", True), ("localhost", True),
     ("LOCALHOST", True), ("[::]", False), ("0.0.0.0", False), ("192.0.2.2", False), ("gateway.internal", False)],
)
def test_loopback_only_listeners(host: str, loopback: bool) -> None:
    assert binds_loopback_only(host) is loopback


@pytest.mark.parametrize(
    ("overrides", "checked"),
    [
        ({}, True),  # the defaults: [::], no auth
        ({"host": "0.0.0.0"}, True),
        ({"host": "127.0.0.1"}, False),  # nothing non-local can connect: no per-call cost
        ({"auth_tokens": ("t",)}, False),
        ({"tls_client_ca": "ca.pem"}, False),
        ({"allow_unauthenticated": True}, False),
    ],
)
def test_when_protected_mode_checks_peers(overrides: dict[str, Any], checked: bool) -> None:
    settings = Settings(**overrides)
    assert needs_peer_check(settings) is checked
    kinds = [type(i) for i in build_interceptors(settings)]
    assert (ProtectedModeInterceptor in kinds) is checked


@pytest.mark.parametrize("raw", ["", ",", " , "])
def test_empty_auth_tokens_are_no_tokens(raw: str) -> None:
    """`LLMRPC_AUTH_TOKENS=` must not install an empty token (an empty Bearer would pass) nor lift protection."""
    settings = Settings.load(environ={"LLMRPC_AUTH_TOKENS": raw})
    assert needs_peer_check(settings)
    kinds = [type(i) for i in build_interceptors(settings)]
    assert kinds == [ProtectedModeInterceptor]


def test_auth_tokens_are_trimmed(start_gateway: Any) -> None:
    gateway = start_gateway(auth_tokens=("s3cret ", " ", ""))
    with llmrpc.Client(gateway.address, metadata=[("authorization", "Bearer s3cret")]) as client:
        assert client.completion(model="mock/echo", messages=MESSAGES).choices[0].message.content
    for empty in (("authorization", "Bearer "), ("x-api-key", "")):
        with llmrpc.Client(gateway.address, metadata=[empty]) as client, pytest.raises(llmrpc.AuthenticationError):
            client.completion(model="mock/echo", messages=MESSAGES)


def test_startup_warnings() -> None:
    (protected,) = startup_warnings(Settings())
    assert "protected mode" in protected and "--auth-tokens" in protected and "--tls-client-ca" in protected
    assert "--allow-unauthenticated" in protected and "[::]:50051" in protected
    (allowed,) = startup_warnings(Settings(allow_unauthenticated=True))
    assert allowed.startswith("--allow-unauthenticated: anyone")
    assert startup_warnings(Settings(host="127.0.0.1")) == []
    assert startup_warnings(Settings(tls_cert="c", tls_key="k", tls_client_ca="ca")) == []
    assert startup_warnings(Settings(auth_tokens=("t",), allow_unauthenticated=True, tls_cert="c")) == []
    (cleartext,) = startup_warnings(Settings(auth_tokens=("t",)))
    assert "cleartext" in cleartext


# --- the interceptor's decision, in-process with fake peers -----------------------------------------------


class _Refused(Exception):
    pass


class FakeContext:
    """The two things the check uses: ``peer()`` and ``abort_with_status`` (which raises, as grpc's does)."""

    def __init__(self, peer: str) -> None:
        self._peer = peer
        self.status: grpc.Status | None = None

    def peer(self) -> str:
        return self._peer

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise _Refused


async def _unary(request: Any, context: Any) -> str:
    return f"answered {request}"


async def _stream(request: Any, context: Any) -> AsyncIterator[str]:
    for i in range(3):
        yield f"{request}-{i}"


async def _intercept(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return handler

    details = SimpleNamespace(method=method, invocation_metadata=())
    result: grpc.RpcMethodHandler = await ProtectedModeInterceptor().intercept_service(continuation, details)
    return result


def _error_info(status: grpc.Status) -> error_details_pb2.ErrorInfo:
    (bin_value,) = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    detail = status_pb2.Status.FromString(bin_value).details[0]
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    return info


@pytest.mark.parametrize("peer", ["ipv4:127.0.0.1:1", "ipv6:%5B::1%5D:2", "ipv6:%5B::ffff:127.0.0.1%5D:3",
                                  "unix:/tmp/s"])
async def test_interceptor_serves_local_peers(peer: str) -> None:
    unary = await _intercept("/llmrpc.v1.CompletionService/Complete", grpc.unary_unary_rpc_method_handler(_unary))
    assert await unary.unary_unary("x", FakeContext(peer)) == "answered x"
    stream = await _intercept("/llmrpc.v1.CompletionService/StreamComplete",
                              grpc.unary_stream_rpc_method_handler(_stream))
    assert [item async for item in stream.unary_stream("s", FakeContext(peer))] == ["s-0", "s-1", "s-2"]


@pytest.mark.parametrize("peer", ["ipv4:203.0.113.9:1234", "ipv6:%5B2001:db8::1%5D:1", "ipv6:%5B::ffff:10.0.0.1%5D:1",
                                  "weird-transport:1"])
async def test_interceptor_refuses_remote_peers(peer: str) -> None:
    unary = await _intercept("/llmrpc.v1.CompletionService/Complete", grpc.unary_unary_rpc_method_handler(_unary))
    context = FakeContext(peer)
    with pytest.raises(_Refused):
        await unary.unary_unary("x", context)
    assert context.status is not None and context.status.code == grpc.StatusCode.UNAUTHENTICATED
    assert "protected mode" in context.status.details and "--allow-unauthenticated" in context.status.details
    info = _error_info(context.status)
    assert info.reason == "API_KEY_INVALID" and info.metadata["protectedMode"] == "true"
    stream = await _intercept("/llmrpc.v1.CompletionService/StreamComplete",
                              grpc.unary_stream_rpc_method_handler(_stream))
    with pytest.raises(_Refused):
        [item async for item in stream.unary_stream("s", FakeContext(peer))]


async def test_interceptor_wraps_each_method_once() -> None:
    interceptor = ProtectedModeInterceptor()
    handler = grpc.unary_unary_rpc_method_handler(_unary)

    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return handler

    details = SimpleNamespace(method="/llmrpc.v1.CompletionService/Complete", invocation_metadata=())
    first = await interceptor.intercept_service(continuation, details)
    assert await interceptor.intercept_service(continuation, details) is first and first is not handler
    unknown = SimpleNamespace(method="/nope/Nope", invocation_metadata=())

    async def none(details: Any) -> None:
        return None

    assert await interceptor.intercept_service(none, unknown) is None  # UNIMPLEMENTED stays grpc's answer


def test_settings_from_flags_and_env() -> None:
    from llmrpc_server.cli import _parser

    args = _parser().parse_args(["--allow-unauthenticated", "--tls-cert", "c.pem", "--tls-key", "k.pem",
                                 "--tls-client-ca", "ca.pem"])
    assert (args.allow_unauthenticated, args.tls_cert, args.tls_key, args.tls_client_ca) == (
        True, "c.pem", "k.pem", "ca.pem")
    env = {"LLMRPC_ALLOW_UNAUTHENTICATED": "1", "LLMRPC_TLS_CLIENT_CA": "ca.pem"}
    settings = Settings.load(environ=env)
    assert settings.allow_unauthenticated is True and settings.tls_client_ca == "ca.pem"
    assert Settings.load(environ={}).allow_unauthenticated is False


async def test_interceptor_leaves_health_and_reflection_alone() -> None:
    for method in ("/grpc.health.v1.Health/Check", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"):
        handler = grpc.unary_unary_rpc_method_handler(_unary)
        assert await _intercept(method, handler) is handler


# --- through the real server, from this machine's non-loopback address -------------------------------------


def _bindable(address: str) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
        return True
    except OSError:
        return False


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (nor link-local), from ``ip -j addr``."""
    if shutil.which("ip") is None:
        return None
    out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return None
    candidates = [info["local"] for iface in json.loads(out.stdout) for info in iface.get("addr_info", [])
                  if info.get("scope") == "global" and "local" in info]
    candidates.sort(key=lambda a: ip_address(a).version)  # IPv4 first
    for address in candidates:
        ip = ip_address(address)
        if not (ip.is_loopback or ip.is_link_local) and _bindable(address):
            return address
    return None


EXTERNAL = non_loopback_address()
needs_external = pytest.mark.skipif(
    EXTERNAL is None, reason="this machine has no non-loopback address to call the server from (ip -j addr)")


def _at(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@pytest.fixture
def open_gateway(start_gateway: Any) -> Any:
    """The defaults a newcomer gets: all addresses, no caller authentication."""
    return start_gateway(host="[::]")


@needs_external
def test_loopback_callers_are_served(open_gateway: Any) -> None:
    assert EXTERNAL is not None
    for host in ("127.0.0.1", "::1", "localhost"):
        with llmrpc.Client(_at(host, open_gateway.gateway.port)) as client:
            resp = client.completion(model="mock/echo", messages=MESSAGES)
            chunks = list(client.completion(model="mock/echo", messages=MESSAGES, stream=True))
        assert resp.choices[0].message.content.endswith("You said: hi")
        assert chunks[-1].choices[0].finish_reason == "stop"


@needs_external
def test_non_loopback_callers_are_refused_with_the_way_out(open_gateway: Any) -> None:
    assert EXTERNAL is not None
    with llmrpc.Client(_at(EXTERNAL, open_gateway.gateway.port)) as client:
        with pytest.raises(llmrpc.AuthenticationError) as unary:
            client.completion(model="mock/echo", messages=MESSAGES)
        with pytest.raises(llmrpc.AuthenticationError):
            list(client.completion(model="mock/echo", messages=MESSAGES, stream=True))
        with pytest.raises(llmrpc.AuthenticationError):
            client.get_supported_openai_params(model="mock/echo")
    err = unary.value
    assert err.grpc_code == grpc.StatusCode.UNAUTHENTICATED and err.reason == "API_KEY_INVALID"
    for hint in ("protected mode", "--auth-tokens", "--tls-client-ca", "--allow-unauthenticated"):
        assert hint in str(err), hint
    assert err.metadata["protectedMode"] == "true" and err.metadata["callerAddress"] == EXTERNAL


@needs_external
def test_health_and_reflection_stay_open_to_everyone(open_gateway: Any) -> None:
    assert EXTERNAL is not None
    with grpc.insecure_channel(_at(EXTERNAL, open_gateway.gateway.port)) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                    timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.CompletionServiceStub(channel).Complete(REQUEST, timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert "llmrpc.v1.CompletionService" in [s.name for s in answer.list_services_response.service]
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


@needs_external
def test_auth_tokens_lift_protected_mode(start_gateway: Any) -> None:
    assert EXTERNAL is not None
    gateway = start_gateway(host="[::]", auth_tokens=("s3cret",))
    target = _at(EXTERNAL, gateway.gateway.port)
    with llmrpc.Client(target, metadata=[("authorization", "Bearer s3cret")]) as client:
        assert client.completion(model="mock/echo", messages=MESSAGES).choices[0].message.content
    with llmrpc.Client(target) as client, pytest.raises(llmrpc.AuthenticationError) as info:
        client.completion(model="mock/echo", messages=MESSAGES)
    assert "protected mode" not in str(info.value)  # the token check answers, not protected mode


@needs_external
def test_allow_unauthenticated_lifts_protected_mode(start_gateway: Any) -> None:
    assert EXTERNAL is not None
    gateway = start_gateway(host="[::]", allow_unauthenticated=True)
    with llmrpc.Client(_at(EXTERNAL, gateway.gateway.port)) as client:
        chunks = list(client.completion(model="mock/echo", messages=MESSAGES, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"


@needs_external
def test_client_certificates_lift_protected_mode(start_gateway: Any, tmp_path: Path) -> None:
    assert EXTERNAL is not None
    pki = make_pki(tmp_path, EXTERNAL)
    gateway = start_gateway(host="[::]", tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                            tls_client_ca=str(pki.client_ca))
    with llmrpc.Client(_at(EXTERNAL, gateway.gateway.port), root_certificates=pki.ca, client_cert=pki.client_cert,
                       client_key=pki.client_key) as client:
        assert client.completion(model="mock/echo", messages=MESSAGES).choices[0].message.content


@needs_external
def test_server_process_defaults_warn_once_and_protect(tmp_path: Path) -> None:
    """`llmrpc-server` as `make run` starts it (default host), with two workers: one warning, and
    every worker serves loopback callers and refuses the others."""
    assert EXTERNAL is not None
    port = free_port()
    server = ServerProcess(tmp_path, "--port", str(port), "--workers", "2")
    try:
        server.wait_for(f"listening on [::]:{port}", count=2)
        wait_serving(_at(EXTERNAL, port))  # health is open from outside too
        for _ in range(4):  # fresh connections: the kernel spreads them over both workers
            with llmrpc.Client(f"127.0.0.1:{port}") as local:
                assert local.completion(model="mock/echo", messages=MESSAGES).choices[0].message.content
            with llmrpc.Client(_at(EXTERNAL, port)) as remote, pytest.raises(llmrpc.AuthenticationError):
                remote.completion(model="mock/echo", messages=MESSAGES)
    finally:
        stderr = server.stop()
    assert stderr.count("protected mode: listening on [::]:") == 1, stderr
