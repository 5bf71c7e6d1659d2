"""HTTP conformance through the real gateway: raw upstreams on 127.0.0.1 script every byte of hostile or
unusual responses, and each case checks that the caller gets its own answer or a clean mapped error,
that the next caller on the same upstream gets its own answer, and that a healthy upstream keeps
answering while the hostile one is being handled. Also: TLS to the upstream and egress proxies."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import ssl
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import brotli
import grpc
import llmrpc
import openai
import pytest
import trustme
import zstandard
from llmrpc_server.egress import InvalidProxy, proxies_from_env

from tests.support import GatewayThread, gateway_settings

Reply = Callable[[str], bytes]  # the reply to a request whose last user message is the argument

KEY = "sk-conformance"


def completion(text: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-raw", "object": "chat.completion", "created": 1700000000, "model": "raw-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()


def response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    lines = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\n{lines}\r\n".encode() + body


def ok(text: str) -> bytes:
    body = completion(text)
    return response(body, "content-type: application/json", f"content-length: {len(body)}")


def encoded(encoding: str, data: bytes) -> Reply:
    return lambda text: response(data, "content-type: application/json", f"content-encoding: {encoding}",
                                 f"content-length: {len(data)}")


class RawUpstream:
    """Answers each request with the next scripted reply (then with ``ok``), built from the request's
    last user message so that every caller can recognise its own answer."""

    def __init__(self) -> None:
        self.replies: list[Reply | None] = []  # None: accept and never answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.open = self.most_open = 0  # connections open now, and at most at once
        self.writers: list[asyncio.StreamWriter] = []
        self.close_after_reply = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                reply = self.replies.pop(0) if self.replies else ok
                if reply is None:
                    await reader.read()  # say nothing until the client gives up
                    return
                writer.write(reply(json.loads(body)["messages"][-1]["content"] if body else ""))
                await writer.drain()
                if self.close_after_reply:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def raw_upstream(tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[RawUpstream, str]]:
    upstream = RawUpstream()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield upstream, f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1"
    finally:
        server.close()
        for writer in upstream.writers:
            writer.close()


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayThread]:
    with GatewayThread(gateway_settings()) as gw:
        yield gw


@pytest.fixture
def client(gateway: GatewayThread) -> Iterator[llmrpc.Client]:
    with llmrpc.Client(gateway.address) as c:
        yield c


async def ask(client: llmrpc.Client, base: str, text: str, **kwargs: Any) -> str:
    resp = await client.acompletion(model="openai/raw-model", api_base=base, api_key=KEY, num_retries=0,
                                    messages=[{"role": "user", "content": text}], **kwargs)
    return str(resp.choices[0].message.content)


async def outcome(client: llmrpc.Client, base: str, text: str, **kwargs: Any) -> str:
    """The answer, or ``"<reason>"`` of the mapped error."""
    try:
        return await ask(client, base, text, **kwargs)
    except openai.OpenAIError as exc:  # every llmrpc exception
        return f"<{getattr(exc, 'reason', type(exc).__name__)}>"


async def hostile_then_next(client: llmrpc.Client, reply: Reply) -> tuple[str, str]:
    """The hostile reply to one caller while a healthy upstream keeps answering others; then the
    next caller on the same upstream. Returns both outcomes."""
    async with raw_upstream() as (hostile, base), raw_upstream() as (_, healthy):
        hostile.replies.append(reply)
        first = asyncio.create_task(outcome(client, base, "first", timeout=20))
        for i in range(3):  # answered while the hostile exchange is in progress or just done
            assert await asyncio.wait_for(ask(client, healthy, f"healthy {i}"), 15) == f"healthy {i}"
        got = await asyncio.wait_for(first, 30)
        following = await asyncio.wait_for(outcome(client, base, "next"), 15)
    return got, following


# ---- framing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.js>; rel=preload\r\n\r\n",
], ids=["100", "103", "100+103"])
async def test_interim_1xx_responses_are_skipped(client: llmrpc.Client, interim: bytes) -> None:
    assert await hostile_then_next(client, lambda text: interim + ok(text)) == ("first", "next")


async def test_bytes_after_a_body_never_reach_the_next_caller(client: llmrpc.Client) -> None:
    smuggled = ok("smuggled")
    got, following = await hostile_then_next(client, lambda text: ok(text) + smuggled)
    assert got == "first"
    assert following == "next"


async def test_content_length_with_transfer_encoding(client: llmrpc.Client) -> None:
    def reply(text: str) -> bytes:
        body = completion(text)
        chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        return response(chunked, "content-type: application/json", "content-length: 7",
                        "transfer-encoding: chunked")

    got, following = await hostile_then_next(client, reply)
    assert got == "first"  # Transfer-Encoding wins over Content-Length (RFC 9112 section 6.3)
    assert following == "next"


async def test_duplicate_differing_content_lengths_are_refused(client: llmrpc.Client) -> None:
    def reply(text: str) -> bytes:
        body = completion(text)
        return response(body + b"12345", f"content-length: {len(body)}", f"content-length: {len(body) + 5}")

    got, following = await hostile_then_next(client, reply)
    assert got in ("<PROVIDER_BAD_RESPONSE>", "<PROVIDER_UNREACHABLE>")
    assert following == "next"


async def test_a_megabyte_of_headers_fails_cleanly(client: llmrpc.Client) -> None:
    """hyper bounds a response head (about 400 KiB, 100 headers): the call fails instead of the
    gateway buffering and merging them."""
    headers = [f"x-filler-{i}: {'a' * 1000}" for i in range(1100)]  # 1.1 MiB

    def reply(text: str) -> bytes:
        body = completion(text)
        return response(body, f"content-length: {len(body)}", *headers)

    assert await hostile_then_next(client, reply) == ("<PROVIDER_BAD_RESPONSE>", "next")
    async with raw_upstream() as (upstream, base):
        upstream.replies.append(reply)
        with pytest.raises(openai.APIError, match="message head is too large"):
            await ask(client, base, "head")


async def test_the_server_closing_a_kept_alive_connection_does_not_fail_the_next_call(
        client: llmrpc.Client) -> None:
    async with raw_upstream() as (upstream, base):
        upstream.close_after_reply = True  # keep-alive by the headers, then closed right away
        for i in range(5):
            assert await ask(client, base, f"call {i}") == f"call {i}"
            await asyncio.sleep(0.05 * (i % 2))  # once straight away, once after the close is seen
    assert upstream.connections == 5


async def test_a_black_holed_base_times_out_while_a_healthy_one_keeps_answering(client: llmrpc.Client) -> None:
    async with raw_upstream() as (hole, dark), raw_upstream() as (_, healthy):
        hole.replies.extend([None] * 8)
        stuck = [asyncio.create_task(outcome(client, dark, f"stuck {i}", timeout=2)) for i in range(8)]
        for i in range(5):
            assert await asyncio.wait_for(ask(client, healthy, f"healthy {i}"), 15) == f"healthy {i}"
        assert await asyncio.wait_for(asyncio.gather(*stuck), 30) == ["<PROVIDER_TIMEOUT>"] * 8


async def test_one_slow_origin_cannot_take_every_connection() -> None:
    """--max-connections-per-host: calls beyond it to a black-holed origin wait for a slot (and time
    out by their own deadline) while other origins are served at once; a slot comes back when
    pyreqwest has really finished the request, which the request's own timeout bounds."""
    with GatewayThread(gateway_settings(max_connections_per_host=2)) as gw, llmrpc.Client(gw.address) as c:
        async with raw_upstream() as (hole, dark), raw_upstream() as (_, healthy):
            hole.replies.extend([None] * 4)
            stuck = [asyncio.create_task(outcome(c, dark, f"stuck {i}", timeout=2)) for i in range(4)]
            for i in range(3):
                assert await asyncio.wait_for(ask(c, healthy, f"healthy {i}"), 15) == f"healthy {i}"
            assert await asyncio.wait_for(asyncio.gather(*stuck), 30) == ["<PROVIDER_TIMEOUT>"] * 4
            assert hole.most_open == 2  # never more than two at once to the black hole
            hole.replies.clear()  # requests that lost the race for a slot never took their black hole
            assert await asyncio.wait_for(ask(c, dark, "after"), 15) == "after"  # the slots came back


# ---- bodies -------------------------------------------------------------------------------------


def _gzip_bomb(decoded_mib: int) -> bytes:
    zero = bytes(1024 * 1024)
    compress = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    return b"".join(compress.compress(zero) for _ in range(decoded_mib)) + compress.flush()


async def test_a_gzip_bomb_stops_at_the_body_limit(client: llmrpc.Client) -> None:
    """~100 KiB on the wire, 100 MiB decoded: the decoded bytes are counted as they are inflated and
    the call fails at 64 MiB."""
    bomb = _gzip_bomb(100)
    assert len(bomb) < 1024 * 1024
    got, following = await hostile_then_next(client, encoded("gzip", bomb))
    assert (got, following) == ("<PROVIDER_BAD_RESPONSE>", "next")
    async with raw_upstream() as (upstream, base):
        upstream.replies.append(encoded("gzip", bomb))
        with pytest.raises(openai.APIError, match="exceeds 67108864 bytes decoded"):
            await ask(client, base, "bomb")


async def test_a_truncated_gzip_body_is_a_bad_response(client: llmrpc.Client) -> None:
    def reply(text: str) -> bytes:
        return encoded("gzip", gzip.compress(completion(text) * 50)[:-12])(text)

    assert await hostile_then_next(client, reply) == ("<PROVIDER_BAD_RESPONSE>", "next")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
async def test_compressed_bodies_are_decoded(client: llmrpc.Client, encoding: str) -> None:
    compress: dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress,
        "zstd": zstandard.ZstdCompressor().compress,
    }

    def reply(text: str) -> bytes:
        return encoded(encoding, compress[encoding](completion(text)))(text)

    async with raw_upstream() as (upstream, base):
        upstream.replies.append(reply)
        assert await ask(client, base, f"decoded {encoding}") == f"decoded {encoding}"
    assert b"zstd" in upstream.requests[0] and b"br" in upstream.requests[0]  # advertised in accept-encoding


async def test_streams_arrive_chunk_by_chunk(client: llmrpc.Client) -> None:
    """The first streamed chunk reaches the caller while the upstream is still holding back the rest."""
    release = asyncio.Event()
    head = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for event in (head + b'[{"index":0,"delta":{"role":"assistant","content":"early"},"finish_reason":null}]}\n\n',
                      None,
                      head + b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'):
            if event is None:
                await release.wait()
                continue
            writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        stream = await client.acompletion(model="openai/raw-model", api_base=base, api_key=KEY,
                                          messages=[{"role": "user", "content": "s"}], stream=True)
        first = await asyncio.wait_for(stream.__anext__(), 15)
        assert first.choices[0].delta.content == "early"
        release.set()
        rest = [c async for c in stream]
        assert rest and rest[-1].choices[0].finish_reason == "stop"
    finally:
        server.close()


# ---- TLS and proxies ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


async def test_tls_upstreams_are_verified_against_the_trust_store(ca: trustme.CA, tmp_path: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The system trust store (``SSL_CERT_FILE`` honoured) decides: unknown CA -> unreachable."""
    async with raw_upstream(tls=_server_tls(ca)) as (upstream, base):
        with GatewayThread(gateway_settings()) as untrusting, llmrpc.Client(untrusting.address) as c:
            assert await outcome(c, base, "x") == "<PROVIDER_UNREACHABLE>"
        bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        with GatewayThread(gateway_settings()) as trusting, llmrpc.Client(trusting.address) as c:
            assert await ask(c, base, "over tls") == "over tls"
            assert await ask(c, base, "again") == "again"
    assert upstream.connections == 1  # the second call reused the TLS connection


class PipeProxy:
    """A forward proxy on 127.0.0.1: CONNECT tunnels for https, absolute-form requests for http
    (forwarded verbatim to the host they name). Records each request's head."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        self.heads.append(head)
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
        host, port = (target if method == "CONNECT" else target.split("/")[2]).rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self.writers.append(up_writer)
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(head)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@asynccontextmanager
async def pipe_proxy() -> AsyncIterator[tuple[PipeProxy, int]]:
    proxy = PipeProxy()
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    try:
        yield proxy, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in proxy.writers:
            writer.close()
        await asyncio.sleep(0.05)


def test_proxies_come_from_the_usual_environment_variables() -> None:
    env = {"HTTPS_PROXY": "http://a:1", "https_proxy": "http://b:2", "NO_PROXY": "x"}
    assert proxies_from_env(env) == {"https": "http://b:2", "no": "x"}
    assert proxies_from_env({"ALL_PROXY": "http://c:3", "HTTP_PROXY": "d:4"}) == {
        "http": "http://d:4", "https": "http://c:3"}
    assert proxies_from_env({"OPENAI_API_KEY": "sk"}) == {}
    with pytest.raises(InvalidProxy, match="HTTPS_PROXY: 'socks5://p:1080' is not an http"):
        proxies_from_env({"HTTPS_PROXY": "socks5://p:1080"})


def test_an_unusable_proxy_stops_the_server_at_startup(capsys: pytest.CaptureFixture[str]) -> None:
    from llmrpc_server.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HTTPS_PROXY", "socks5://proxy.example:1080")
        assert main(["--port", "0"]) == 2
    assert "bad setting: HTTPS_PROXY: 'socks5://proxy.example:1080' is not an http" in capsys.readouterr().err


async def test_plain_http_goes_through_http_proxy_in_absolute_form(client: llmrpc.Client) -> None:
    async with raw_upstream() as (upstream, base), pipe_proxy() as (proxy, port):
        env = {"HTTP_PROXY": f"http://127.0.0.1:{port}"}
        with GatewayThread(gateway_settings(env)) as gw, llmrpc.Client(gw.address) as c:
            assert await ask(c, base, "via the proxy") == "via the proxy"
    assert proxy.heads[0].startswith(f"POST {base}/chat/completions HTTP/1.1\r\n".encode())
    assert len(upstream.requests) == 1


async def test_https_goes_through_a_connect_tunnel_with_proxy_credentials(
        ca: trustme.CA, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    async with raw_upstream(tls=_server_tls(ca)) as (upstream, base), pipe_proxy() as (proxy, port):
        env = {"HTTPS_PROXY": f"http://us%40r:p%3Ass@127.0.0.1:{port}"}
        with GatewayThread(gateway_settings(env)) as gw, llmrpc.Client(gw.address) as c:
            assert await ask(c, base, "tunnelled") == "tunnelled"
            assert await ask(c, base, "kept") == "kept"  # the tunnel is kept alive and reused
    assert len(proxy.heads) == 1 and upstream.connections == 1
    origin = base.split("/")[2]
    lines = proxy.heads[0].split(b"\r\n")
    assert lines[0] == f"CONNECT {origin} HTTP/1.1".encode()
    credentials = base64.b64encode(b"us@r:p:ss").decode()
    assert any(line.lower() == f"proxy-authorization: basic {credentials}".lower().encode() for line in lines)


async def test_no_proxy_hosts_are_reached_directly() -> None:
    async with raw_upstream() as (upstream, base):
        env = {"HTTP_PROXY": "http://127.0.0.1:1", "NO_PROXY": "localhost,127.0.0.1"}
        with GatewayThread(gateway_settings(env)) as gw, llmrpc.Client(gw.address) as c:
            assert await ask(c, base, "direct") == "direct"
    assert len(upstream.requests) == 1


async def test_a_proxy_refusing_the_tunnel_is_unreachable(client: llmrpc.Client) -> None:
    async with raw_upstream() as (refusing, proxy_base):
        refusing.replies.append(lambda _: response(b"", "content-length: 0",
                                                   status="407 Proxy Authentication Required"))
        proxy_port = int(proxy_base.split(":")[2].split("/")[0])
        env = {"HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}"}
        with GatewayThread(gateway_settings(env)) as gw, llmrpc.Client(gw.address) as c:
            assert await outcome(c, "https://api.example.test/v1", "x") == "<PROVIDER_UNREACHABLE>"


def test_grpc_status_of_a_transport_failure_is_unavailable(gateway: GatewayThread) -> None:
    from llmrpc.v1 import chat_pb2
    from llmrpc.v1 import completion_service_pb2 as pb
    from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

    req = pb.CompleteRequest(model="openai/raw-model", api_base="http://127.0.0.1:1/v1", api_key=KEY,
                             num_retries=0, messages=[chat_pb2.Message(role="user", content="x")])
    with grpc.insecure_channel(gateway.address) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.CompletionServiceStub(channel).Complete(req, timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
