"""Egress policy for base URLs callers name (``--client-api-base``, ``--client-api-base-allow``): the
pure policy, then end to end through the gateway, and the executor pinning connections to the
addresses it checked."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import llmrpc
import pytest
from llmrpc_server.config import Settings
from llmrpc_server.egress import AddressCheck, EgressPolicy, EgressRefused, is_link_local_or_metadata, matches_prefix
from llmrpc_server.executor import Executor
from llmrpc_server.providers.base import HttpCall

from tests.support import GatewayThread, free_port, gateway_settings

KEY = "sk-egress"


# ---- the pure policy ----------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "special"), [
    ("169.254.169.254", True), ("169.254.0.1", True), ("fe80::1", True), ("fd00:ec2::254", True),
    ("::ffff:169.254.169.254", True), ("127.0.0.1", False), ("10.0.0.1", False), ("8.8.8.8", False),
    ("fd00:ec2::253", False), ("::1", False),
])
def test_link_local_and_metadata_addresses(address: str, special: bool) -> None:
    assert is_link_local_or_metadata(ipaddress.ip_address(address)) is special


@pytest.mark.parametrize(("public_only", "address", "refused"), [
    (False, "169.254.169.254", True), (False, "fd00:ec2::254", True), (False, "127.0.0.1", False),
    (False, "10.1.2.3", False), (True, "127.0.0.1", True), (True, "10.1.2.3", True), (True, "192.168.1.1", True),
    (True, "::1", True), (True, "::ffff:127.0.0.1", True), (True, "8.8.8.8", False), (True, "2606:4700::1", False),
])
def test_address_checks(public_only: bool, address: str, refused: bool) -> None:
    check = AddressCheck("api_base", public_only=public_only)
    outcome = check.refusal("h.example", ipaddress.ip_address(address))
    assert (outcome is not None) is refused
    if outcome is not None:
        assert outcome.field == "api_base" and str(ipaddress.ip_address(address)) in outcome.message


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://10.0.0.5:8000/v1", True),
    ("http://10.0.0.5:8000/v1/chat/completions", True),
    ("HTTP://10.0.0.5:8000/v1", True),
    ("http://10.0.0.5:8000/v10", False),
    ("http://10.0.0.5:800/v1", False),
    ("https://10.0.0.5:8000/v1", False),
    ("http://10.0.0.5:8000@evil.example/v1", False),
    ("http://user@10.0.0.5:8000/v1", False),
    ("http://vllm.internal", True),
    ("http://vllm.internal:80/anything", True),
    ("http://vllm.internal:8080/v1", False),
    ("http://vllm.internal.evil.example/v1", False),
    ("http://VLLM.internal/v1", True),
])
def test_allow_prefixes_match_at_boundaries(url: str, allowed: bool) -> None:
    assert matches_prefix(url, ("http://10.0.0.5:8000/v1/", "http://vllm.internal")) is allowed


def test_modes() -> None:
    url = "http://model.example/v1"
    assert EgressPolicy("off").refused(url)
    assert not EgressPolicy("off", ("http://model.example",)).refused(url)
    assert not EgressPolicy("public").refused(url) and not EgressPolicy("any").refused(url)
    assert EgressPolicy("public").check(url) == AddressCheck("api_base", public_only=True,
                                                             lift_hint="a server's client_api_base_allow prefix "
                                                                       "lifts that")
    check = EgressPolicy("any").check(url)
    assert check is not None and not check.public_only  # link-local and metadata still refused
    assert EgressPolicy("any", ("http://model.example",)).check(url) is None
    assert EgressPolicy("public", ("http://model.example",)).check(url) is None


@pytest.mark.parametrize(("values", "error"), [
    ({"client_api_base": "private"}, "client_api_base must be"),
    ({"client_api_base_allow": "ftp://x"}, "is not an http"),
    ({"client_api_base_allow": "10.0.0.5:8000"}, "is not an http"),
])
def test_bad_settings_are_refused_at_startup(values: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Settings.load(values, environ={})


def test_settings_from_the_environment() -> None:
    settings = Settings.load(environ={"LLMRPC_CLIENT_API_BASE": "public",
                                      "LLMRPC_CLIENT_API_BASE_ALLOW": "http://10.0.0.5:8000/v1, http://vllm:80"})
    assert settings.egress_policy() == EgressPolicy("public", ("http://10.0.0.5:8000/v1", "http://vllm:80"))


# ---- end to end ---------------------------------------------------------------------------------


class Upstream:
    """A minimal OpenAI-compatible upstream that counts the requests it got."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                text = json.loads(await reader.readexactly(length))["messages"][-1]["content"]
                self.requests += 1
                body = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             + f"content-length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def upstream(port: int = 0) -> AsyncIterator[tuple[Upstream, int]]:
    up = Upstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", port)
    try:
        yield up, server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture
def port() -> int:
    """Where the test's upstream will listen, known before the gateways start."""
    return free_port()


@pytest.fixture
def gateways(port: int) -> Iterator[dict[str, llmrpc.Client]]:
    """One gateway per mode, and ``public`` and ``off`` with an allow prefix for ``localhost:<port>``."""
    allow = (f"http://localhost:{port}/v1",)
    modes: dict[str, dict[str, Any]] = {
        "any": {}, "public": {"client_api_base": "public"}, "off": {"client_api_base": "off"},
        "public+allow": {"client_api_base": "public", "client_api_base_allow": allow},
        "off+allow": {"client_api_base": "off", "client_api_base_allow": allow},
    }
    started = {name: GatewayThread(gateway_settings(**kw)).start() for name, kw in modes.items()}
    clients = {name: llmrpc.Client(gw.address) for name, gw in started.items()}
    yield clients
    for name, gw in started.items():
        clients[name].close()
        gw.stop()


async def outcome(client: llmrpc.Client, base: str, text: str = "hi", **kwargs: Any) -> str:
    try:
        resp = await client.acompletion(model="openai/m", api_base=base, api_key=KEY, num_retries=0,
                                        messages=[{"role": "user", "content": text}], **kwargs)
    except llmrpc.PermissionDeniedError as exc:
        assert exc.grpc_code.name == "PERMISSION_DENIED" and exc.reason == "API_BASE_NOT_ALLOWED"
        assert exc.metadata["field"] == "api_base" and [v[0] for v in exc.field_violations] == ["api_base"]
        return "denied"
    return str(resp.choices[0].message.content)


async def test_each_mode_end_to_end(gateways: dict[str, llmrpc.Client], port: int) -> None:
    async with upstream(port) as (up, _):
        literal, named = f"http://127.0.0.1:{port}/v1", f"http://localhost:{port}/v1"
        got = {name: (await outcome(c, literal, "literal"), await outcome(c, named, "named"))
               for name, c in gateways.items()}
    assert got == {
        "any": ("literal", "named"),
        "public": ("denied", "denied"),  # localhost resolves to 127.0.0.1: not public
        "off": ("denied", "denied"),
        "public+allow": ("denied", "named"),
        "off+allow": ("denied", "named"),
    }
    assert up.requests == 4  # the four answers; a refusal sends nothing


async def test_metadata_addresses_are_refused_in_every_mode(gateways: dict[str, llmrpc.Client]) -> None:
    for client in gateways.values():
        assert await outcome(client, "http://169.254.169.254/latest") == "denied"
        assert await outcome(client, "http://[fd00:ec2::254]/v1") == "denied"
        assert await outcome(client, "http://[::ffff:169.254.169.254]/v1") == "denied"


async def test_the_servers_own_base_is_not_checked(gateways: dict[str, llmrpc.Client]) -> None:
    """Only caller-named bases are: a base from the server's environment is the operator's choice."""
    async with upstream() as (up, port):
        env = {"OPENAI_API_KEY": KEY, "OPENAI_API_BASE": f"http://localhost:{port}/v1"}
        with GatewayThread(gateway_settings(env, client_api_base="off")) as gw, llmrpc.Client(gw.address) as c:
            resp = await c.acompletion(model="openai/m", messages=[{"role": "user", "content": "own"}])
    assert resp.choices[0].message.content == "own" and up.requests == 1


async def test_streams_are_checked_too(gateways: dict[str, llmrpc.Client]) -> None:
    async with upstream() as (up, port):
        with pytest.raises(llmrpc.PermissionDeniedError, match=r"non-public address 127\.0\.0\.1"):
            stream = await gateways["public"].acompletion(
                model="openai/m", api_base=f"http://localhost:{port}/v1", api_key=KEY, stream=True,
                messages=[{"role": "user", "content": "s"}])
            [c async for c in stream]
    assert up.requests == 0


# ---- pinning ------------------------------------------------------------------------------------


async def test_connections_go_to_the_checked_address_not_a_second_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor resolves the name once, checks the answer and pins the connection to it: the
    name below resolves nowhere else (the system resolver does not know it), so the call can only
    succeed by connecting to the address that was checked."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    lookups: list[str] = []

    async def fake_getaddrinfo(host: str, port: int, **kwargs: Any) -> Any:
        lookups.append(host)
        if host == "rebind.invalid":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return await real(host, port, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
    executor = Executor()
    await executor.start()
    try:
        async with upstream() as (up, port):
            call = HttpCall(f"http://rebind.invalid:{port}/v1/chat/completions", {"content-type": "application/json"},
                            {"model": "m", "messages": [{"role": "user", "content": "pinned"}]})
            reply = await executor.send(call, timeout=10, address_check=AddressCheck("api_base", public_only=False))
            assert reply.status == 200 and b"pinned" in reply.body
            with pytest.raises(EgressRefused, match=r"non-public address 127\.0\.0\.1"):
                await executor.send(call, timeout=10, address_check=AddressCheck("api_base", public_only=True))
        assert lookups == ["rebind.invalid", "rebind.invalid"] and up.requests == 1
    finally:
        await executor.close()
