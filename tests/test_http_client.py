"""The executor's HTTP/1.1 client against raw local servers that script every byte of the exchange:
keep-alive reuse, body framings, compression, TLS, broken peers, cancellation and backpressure."""

from __future__ import annotations

import asyncio
import base64
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme
from llmrpc_server import _http, _http_proxy

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """Answers each request on a connection with ``script``; counts connections and requests."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                self.requests.append(head + await reader.readexactly(length))
                await self.script(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def raw_server(script: Script, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[RawServer, str]]:
    server = RawServer(script)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield server, f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1/chat"
    finally:
        srv.close()


def replying(*parts: bytes, close: bool = False) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
        if close:
            writer.close()
    return script


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll instead of sleeping a fixed time: a loaded CI machine may need longer."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def ok(body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


async def fetch(client: _http.HttpClient, url: str, body: bytes = b"{}") -> tuple[int, dict[str, str], bytes]:
    resp = await client.request("POST", url, {"content-type": "application/json"}, body)
    try:
        data = b""
        while chunk := await resp.read_chunk():
            data += chunk
        return resp.status, dict(resp.headers), data
    finally:
        resp.close()


async def test_keep_alive_reuses_one_connection_and_frames_the_request() -> None:
    async with raw_server(replying(ok(b'{"a":1}', "X-Request-Id: r1"))) as (server, url):
        client = _http.HttpClient()
        for _ in range(3):
            status, headers, body = await fetch(client, url, b'{"q":1}')
            assert (status, body, headers["x-request-id"]) == (200, b'{"a":1}', "r1")
        await client.close()
    assert server.connections == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat HTTP/1.1"
    assert {b"content-length: 7", b"content-type: application/json", b"user-agent: llmrpc/0.1"} <= set(lines)
    assert body == b'{"q":1}'


async def test_connection_close_is_honoured() -> None:
    async with raw_server(replying(ok(b"x", "Connection: close"), close=True)) as (server, url):
        client = _http.HttpClient()
        assert (await fetch(client, url))[2] == b"x"
        assert (await fetch(client, url))[2] == b"x"
        await client.close()
    assert server.connections == 2


async def test_chunked_body_is_decoded() -> None:
    reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    async with raw_server(replying(reply)) as (server, url):
        client = _http.HttpClient()
        assert (await fetch(client, url))[2] == b"hello world"
        assert (await fetch(client, url))[2] == b"hello world"
        await client.close()
    assert server.connections == 1


async def test_body_delimited_by_close() -> None:
    async with raw_server(replying(b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the end", close=True)) as (_, url):
        client = _http.HttpClient()
        assert (await fetch(client, url))[2] == b"until the end"
        await client.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_body_is_decoded(encoding: str) -> None:
    import zlib

    packed = gzip.compress(b"squeezed " * 100) if encoding == "gzip" else zlib.compress(b"squeezed " * 100)
    async with raw_server(replying(ok(packed, f"Content-Encoding: {encoding}"))) as (_, url):
        client = _http.HttpClient()
        assert (await fetch(client, url))[2] == b"squeezed " * 100
        await client.close()


@pytest.mark.parametrize(("reply", "error"), [
    (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", _http.RemoteClosed),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel", _http.RemoteClosed),
    (b"HTTP/1.1 200 O", _http.RemoteClosed),
    (b"", _http.RemoteClosed),
    (b"SMTP ready\r\n\r\n", _http.ProtocolError),
])
async def test_broken_responses_raise(reply: bytes, error: type[Exception]) -> None:
    async with raw_server(replying(reply, close=True)) as (_, url):
        client = _http.HttpClient(max_connections=1)
        with pytest.raises(error):
            await fetch(client, url)
        with pytest.raises(error):  # the failed call gave its connection slot back
            await asyncio.wait_for(fetch(client, url), 5)
        await client.close()


async def test_invalid_urls_and_headers_are_refused_before_sending() -> None:
    client = _http.HttpClient()
    for url in ("ftp://example.com/x", "http:///nohost", "http://h:99999/", "http://h/a b"):
        with pytest.raises(_http.InvalidRequest):
            await client.request("POST", url, {}, b"")
    with pytest.raises(_http.InvalidRequest, match="line break"):
        await client.request("POST", "http://127.0.0.1:1/", {"x-evil": "a\r\nhost: other"}, b"")
    with pytest.raises(_http.InvalidRequest, match="latin-1"):
        await client.request("POST", "http://127.0.0.1:1/", {"x-name": "名前"}, b"")


async def test_refused_connection_is_a_connect_error() -> None:
    async with raw_server(replying(ok(b""))) as (_, url):
        pass  # the port is closed now
    client = _http.HttpClient()
    with pytest.raises(_http.ConnectError, match="cannot connect"):
        await fetch(client, url)


async def test_tls_verifies_the_server_certificate() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    async with raw_server(replying(ok(b"secret")), tls=server_ctx) as (server, url):
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        client = _http.HttpClient(ssl_context=trusting)
        assert (await fetch(client, url))[2] == b"secret"
        assert (await fetch(client, url))[2] == b"secret"
        await client.close()
        assert server.connections == 1
        with pytest.raises(_http.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await fetch(_http.HttpClient(), url)  # the system trust store does not know this CA


async def test_cancelled_read_drops_the_connection_and_frees_its_slot() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart")
        await asyncio.sleep(0.3)
        writer.write(b"x" * 96)

    async with raw_server(slow) as (server, url):
        client = _http.HttpClient(max_connections=1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(fetch(client, url), 0.1)
        status, _, body = await asyncio.wait_for(fetch(client, url), 5)
        assert (status, len(body)) == (200, 100)
        await client.close()
    assert server.connections == 2  # the half-read connection was not reused


async def test_idle_connections_expire_and_peer_closed_ones_are_skipped() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b"y"))
        await writer.drain()
        writer.close()  # keep-alive in the headers, then the peer closes the idle connection

    async with raw_server(once) as (server, url):
        client = _http.HttpClient()
        for _ in range(3):
            assert (await fetch(client, url))[2] == b"y"
            await until(lambda: all(c.closed for conns in client._idle.values() for c in conns))
        await client.close()
    assert server.connections == 3
    async with raw_server(replying(ok(b"z"))) as (server, url):
        client = _http.HttpClient(keepalive=0.1)
        await fetch(client, url)
        assert any(client._idle.values())
        await until(lambda: not any(client._idle.values()))  # expired: closed and out of the pool
        await fetch(client, url)
        await client.close()
    assert server.connections == 2


async def test_large_bodies_pause_reading_until_consumed() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB, well over the 256 KiB high-water mark
    async with raw_server(replying(ok(payload))) as (_, url):
        client = _http.HttpClient()
        resp = await client.request("GET", url, {}, b"")
        conn = resp._conn
        assert conn is not None
        await until(lambda: conn._paused)  # the socket filled our buffer while nobody read
        assert conn.buffered < len(payload)
        data = b""
        while chunk := await resp.read_chunk():
            data += chunk
        resp.close()
        assert data == payload
        assert (await fetch(client, url))[2] == payload
        await client.close()


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
        except asyncio.IncompleteReadError:
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
    srv = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    try:
        yield proxy, srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        for writer in proxy.writers:  # ends every pipe with EOF instead of cancelling it at loop close
            writer.close()
        await asyncio.sleep(0.05)


def test_proxies_come_from_the_usual_environment_variables() -> None:
    env = {"HTTPS_PROXY": "http://a:1", "https_proxy": "http://b:2", "NO_PROXY": "x"}
    assert _http_proxy.proxies_from_env(env) == {"https": "http://b:2", "no": "x"}
    assert _http_proxy.proxies_from_env({"ALL_PROXY": "http://c:3", "HTTP_PROXY": "http://d:4"}) == {
        "http": "http://d:4", "https": "http://c:3"}
    assert _http_proxy.proxies_from_env({"OPENAI_API_KEY": "sk"}) == {}
    with pytest.raises(_http_proxy.InvalidProxy, match="HTTPS_PROXY: 'socks5://p:1080' is not an http://"):
        _http_proxy.proxies_from_env({"HTTPS_PROXY": "socks5://p:1080"})


def test_an_unusable_proxy_stops_the_server_at_startup(capsys: pytest.CaptureFixture[str]) -> None:
    from llmrpc_server.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HTTPS_PROXY", "https://proxy.example:3128")
        assert main(["--port", "0"]) == 2
    assert "bad setting: HTTPS_PROXY: 'https://proxy.example:3128' is not an http://" in capsys.readouterr().err


@pytest.mark.parametrize(("host", "port", "no_proxy", "bypass"), [
    ("api.openai.com", 443, "*", True),
    ("api.openai.com", 443, "openai.com", True),
    ("api.openai.com", 443, ".openai.com", True),
    ("api.openai.com", 443, "*.openai.com", True),
    ("notopenai.com", 443, "openai.com", False),
    ("api.openai.com", 443, "openai.com:8443", False),
    ("api.openai.com", 443, "localhost, openai.com:443", True),
    ("10.1.2.3", 80, "10.0.0.0/8", True),
    ("10.1.2.3", 80, "192.168.0.0/16,127.0.0.1", False),
    ("::1", 80, "::1", True),
    ("api.openai.com", 443, "", False),
])
def test_no_proxy_matching(host: str, port: int, no_proxy: str, bypass: bool) -> None:
    assert _http_proxy.bypasses_proxy(host, port, no_proxy) is bypass


async def test_https_goes_through_a_connect_tunnel_with_proxy_credentials() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with raw_server(replying(ok(b"tunnelled")), tls=server_ctx) as (server, url), pipe_proxy() as (proxy, port):
        client = _http.HttpClient(ssl_context=trusting, proxies={"https": f"http://us%40r:p%3Ass@127.0.0.1:{port}"})
        assert (await fetch(client, url))[2] == b"tunnelled"
        assert (await fetch(client, url))[2] == b"tunnelled"  # the tunnel is kept alive and reused
        await client.close()
    assert len(proxy.heads) == 1 and server.connections == 1
    origin = url.split("/")[2]
    lines = proxy.heads[0].split(b"\r\n")
    assert lines[0] == f"CONNECT {origin} HTTP/1.1".encode()
    credentials = base64.b64encode(b"us@r:p:ss").decode()
    assert f"proxy-authorization: Basic {credentials}".encode() in lines


async def test_plain_http_through_a_proxy_uses_the_absolute_form() -> None:
    async with raw_server(replying(ok(b"forwarded"))) as (server, url), pipe_proxy() as (proxy, port):
        client = _http.HttpClient(proxies={"http": f"http://127.0.0.1:{port}"})
        assert (await fetch(client, url))[2] == b"forwarded"
        await client.close()
    assert proxy.heads[0].startswith(f"POST {url} HTTP/1.1\r\n".encode())
    assert server.requests[0].startswith(f"POST {url} HTTP/1.1\r\n".encode())


async def test_no_proxy_hosts_are_reached_directly() -> None:
    async with raw_server(replying(ok(b"direct"))) as (_, url):
        client = _http.HttpClient(proxies={"http": "http://127.0.0.1:1", "no": "localhost,127.0.0.1"})
        assert (await fetch(client, url))[2] == b"direct"
        await client.close()


async def test_an_unusable_proxy_url_is_an_invalid_request() -> None:
    client = _http.HttpClient(proxies={"https": "socks5://127.0.0.1:1080"})
    with pytest.raises(_http.InvalidRequest, match=r"https proxy 'socks5://127\.0\.0\.1:1080' is not an http://"):
        await fetch(client, "https://api.example.test/v1/chat")
    await client.close()


async def test_a_proxy_refusing_the_tunnel_is_a_connect_error() -> None:
    refuse = replying(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n", close=True)
    async with raw_server(refuse) as (_, proxy_url):
        proxy_port = int(proxy_url.split(":")[2].split("/")[0])
        client = _http.HttpClient(proxies={"https": f"http://127.0.0.1:{proxy_port}"})
        with pytest.raises(_http.ConnectError, match=r"refused the tunnel.*HTTP 407"):
            await fetch(client, "https://api.example.test/v1/chat")
        await client.close()


async def test_the_gateway_sends_upstream_calls_through_http_proxy() -> None:
    """End to end: HTTP_PROXY in the server's environment routes the OpenAI call through the proxy."""
    import llmrpc

    from tests.support import GatewayThread, gateway_settings
    from tests.upstreams import FakeUpstream
    from tests.upstreams import openai as oai

    async with pipe_proxy() as (proxy, port):
        with FakeUpstream(default=oai.default_handler) as upstream:
            base = upstream.url
            env = {"OPENAI_API_KEY": "sk-k", "OPENAI_API_BASE": base, "HTTP_PROXY": f"http://127.0.0.1:{port}"}
            with GatewayThread(gateway_settings(env)) as gateway:
                client = llmrpc.Client(gateway.address)
                resp = await client.acompletion(model="openai/gpt-4o-mini",
                                                messages=[{"role": "user", "content": "via the proxy?"}])
                client.close()
    assert resp.choices[0].message.content
    assert proxy.heads[0].startswith(f"POST {base}/chat/completions HTTP/1.1\r\n".encode())
    assert len(upstream.requests) == 1
