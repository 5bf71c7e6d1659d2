"""The executor's HTTP/1.1 client against raw local servers that script every byte of the exchange:
keep-alive reuse, body framings, compression, TLS, broken peers, cancellation and backpressure."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme
from llmrpc_server import _http

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
        with pytest.raises(_http.InvalidURL):
            await client.request("POST", url, {}, b"")
    with pytest.raises(_http.InvalidURL, match="line break"):
        await client.request("POST", "http://127.0.0.1:1/", {"x-evil": "a\r\nhost: other"}, b"")
    with pytest.raises(_http.InvalidURL, match="latin-1"):
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
        client = _http.HttpClient(keepalive=0.1)
        for _ in range(3):
            assert (await fetch(client, url))[2] == b"y"
            await asyncio.sleep(0.05)
        await client.close()
    assert server.connections == 3
    async with raw_server(replying(ok(b"z"))) as (server, url):
        client = _http.HttpClient(keepalive=0.1)
        await fetch(client, url)
        await asyncio.sleep(0.3)
        assert not any(client._idle.values())  # expired: closed and out of the pool
        await fetch(client, url)
        await client.close()
    assert server.connections == 2


async def test_large_bodies_pause_reading_until_consumed() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB, well over the 256 KiB high-water mark
    async with raw_server(replying(ok(payload))) as (_, url):
        client = _http.HttpClient()
        resp = await client.request("GET", url, {}, b"")
        await asyncio.sleep(0.2)  # let the socket fill our buffer while nobody reads
        conn = resp._conn
        assert conn is not None and conn._paused
        assert conn.buffered <= 2 * 1024 * 1024
        data = b""
        while chunk := await resp.read_chunk():
            data += chunk
        resp.close()
        assert data == payload
        assert (await fetch(client, url))[2] == payload
        await client.close()
