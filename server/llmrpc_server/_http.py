"""A small pooled HTTP/1.1 client on asyncio protocols; httptools (llhttp, Node's parser) parses.

Why not aiohttp or httpx: the gateway's CPU budget is 1 ms per unary call, and on the 2-core bench
machine aiohttp's client costs ~0.25-0.3 ms per call (request/response objects, tracing hooks, cookie
and redirect handling we never use) and httpx's default transport ~2.7 ms; this one ~0.1 ms. This client does only
what an LLM upstream needs: keep-alive pooling per origin, TLS, a connect timeout, content-length
and chunked bodies (llhttp decodes both), gzip/deflate bodies, backpressure on streamed reads, and
the ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY`` egress proxies that httpx (and so
the openai SDK and LiteLLM) honour: CONNECT tunnels for https, absolute-form requests for http.
``make bench`` prints the comparison.

Exceptions (all carry a message for the status detail)::

    HttpError
     ├── InvalidRequest   not an http(s) URL, a header with CR/LF, a bad proxy URL
     ├── ConnectError     DNS, refused, unreachable, TLS handshake, a proxy refusing the tunnel
     ├── ConnectTimeout   opening the connection took longer than connect_timeout
     ├── RemoteClosed     the peer closed the connection before the response was complete
     └── ProtocolError    the peer's bytes are not HTTP/1.1
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

import httptools

from ._http_proxy import InvalidProxy, Proxy, bypasses_proxy, parse_proxy

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "HttpClient",
    "HttpError",
    "InvalidRequest",
    "ProtocolError",
    "RemoteClosed",
    "Response",
]

_USER_AGENT = "llmrpc/0.1"
_HIGH_WATER = 256 * 1024  # buffered body bytes before reading from the socket pauses


class HttpError(Exception):
    """Base of every transport failure this module raises."""


class InvalidRequest(HttpError):
    """The URL is not an absolute http(s) URL, a header would break the request framing, or the
    proxy URL is not an http:// URL."""


class ConnectError(HttpError):
    """No connection could be opened."""


class ConnectTimeout(HttpError):
    """Opening the connection took longer than the connect timeout."""


class RemoteClosed(HttpError):
    """The peer closed or reset the connection before the response was complete."""


class ProtocolError(HttpError):
    """The peer's bytes are not a valid HTTP/1.1 response."""


@dataclass(frozen=True, slots=True)
class _Target:
    origin: tuple[str, str, int]  # scheme, host, port: the pool key
    path: str
    host_header: str


@lru_cache(maxsize=512)
def _parse_url(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"{url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"{url!r} is not an absolute http(s) URL")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in path for c in " \r\n"):
        raise InvalidRequest(f"{url!r} contains whitespace")
    default_port = 443 if parts.scheme == "https" else 80
    return _Target((parts.scheme, parts.hostname, port or default_port), path, parts.netloc.rpartition("@")[2])


def _request_head(method: str, target: _Target, headers: Mapping[str, str], length: int,
                  proxy: Proxy | None = None) -> bytes:
    # Through a proxy, plain http requests use the absolute form (RFC 9112 section 3.2.2).
    path = target.path if proxy is None else f"http://{target.host_header}{target.path}"
    lines = [f"{method} {path} HTTP/1.1\r\nhost: {target.host_header}\r\ncontent-length: {length}\r\n"]
    if proxy is not None and proxy.authorization:
        lines.append(f"proxy-authorization: {proxy.authorization}\r\n")
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise InvalidRequest(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}\r\n")
    if "user-agent" not in headers:
        lines.append(f"user-agent: {_USER_AGENT}\r\n")
    lines.append("\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(f"a header is not latin-1: {exc}") from None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; holds the state of the response currently being read."""

    def __init__(self, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: HttpError | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # create_connection gives a Transport

    def data_received(self, data: bytes) -> None:
        if self._parser is None or self.complete:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"invalid HTTP response from the upstream: {exc}"))
            self.close()
            return
        if self.buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None and not self.complete and self.error is None:
            if self.headers_done and self._close_delimited():
                self.complete = True  # the body ends where the connection ends
            else:
                reason = f": {exc}" if exc else ""
                self.error = RemoteClosed(f"the upstream closed the connection mid-response{reason}")
        self._wake()

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        assert self._parser is not None
        self.keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the message is done
        self.complete = True
        self._wake()

    # -- used by HttpClient and Response
    def send(self, head: bytes, body: bytes) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status, self.raw_headers, self.chunks, self.buffered = 0, [], [], 0
        self.headers_done = self.complete = self.keep_alive = False
        assert self.transport is not None
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)

    async def wait(self) -> None:
        """Until the next parser event or connection loss; raises the connection's error."""
        if self.error is not None:
            raise self.error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def take_chunks(self) -> bytes:
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks, self.buffered = [], 0
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()
        return data

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self.error is None and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _close_delimited(self) -> bool:
        names = {name.lower() for name, _ in self.raw_headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _fail(self, error: HttpError) -> None:
        self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Response:
    """An upstream response whose headers have arrived; read the body, then :meth:`close`."""

    def __init__(self, conn: _Connection, client: HttpClient) -> None:
        self._conn: _Connection | None = conn
        self._client = client
        self.status = conn.status
        headers: dict[str, str] = {}
        for raw_name, raw_value in conn.raw_headers:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.headers: Mapping[str, str] = headers
        encoding = headers.get("content-encoding", "").strip().lower()
        # wbits 47 = 32 + 15: accept a gzip or a zlib header
        self._decoder = zlib.decompressobj(47) if encoding in ("gzip", "deflate", "x-gzip") else None

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("content-length")
        return int(raw) if raw is not None and raw.isdigit() else None

    async def read_chunk(self) -> bytes:
        """The body bytes received so far (waiting for some); ``b""`` once the body is complete."""
        conn = self._conn
        if conn is None:
            return b""
        while not conn.chunks:
            if conn.complete:
                self.close()
                return self._decoder.flush() if self._decoder is not None else b""
            await conn.wait()
        data = conn.take_chunks()
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as exc:
                raise ProtocolError(f"undecodable compressed body: {exc}") from None
        return data

    def close(self) -> None:
        """Return the connection to the pool if the response was read to its end, else drop it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._release(conn)


class HttpClient:
    """Keep-alive connection pools per (scheme, host, port). Create and use it in one event loop."""

    def __init__(self, *, max_connections: int = 1000, connect_timeout: float = 10.0,
                 keepalive: float = 15.0, ssl_context: ssl.SSLContext | None = None,
                 proxies: Mapping[str, str] | None = None) -> None:
        self._proxies = dict(proxies or {})
        self._proxy_by_origin: dict[tuple[str, str, int], Proxy | None] = {}  # NO_PROXY decided once per origin
        self._slots = asyncio.Semaphore(max_connections)
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._closed = False

    async def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Send a request and wait for the response's headers."""
        target = _parse_url(url)
        proxy = self._proxy_for(target.origin)
        head = _request_head(method, target, headers, len(body), proxy if target.origin[0] == "http" else None)
        await self._slots.acquire()
        conn: _Connection | None = None
        try:
            conn = self._idle_connection(target.origin) or await self._connect(target.origin, proxy)
            conn.send(head, body)
            while not conn.headers_done:
                await conn.wait()
        except BaseException:
            if conn is not None:
                conn.close()
            self._slots.release()
            raise
        return Response(conn, self)

    async def close(self) -> None:
        """Close the idle connections; responses still open close theirs when they are closed."""
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def _idle_connection(self, origin: tuple[str, str, int]) -> _Connection | None:
        conns = self._idle.get(origin)
        while conns:
            conn = conns.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if not conn.closed:
                return conn
        return None

    def _proxy_for(self, origin: tuple[str, str, int]) -> Proxy | None:
        if not self._proxies:
            return None
        if origin not in self._proxy_by_origin:
            self._proxy_by_origin[origin] = self._choose_proxy(origin)
        return self._proxy_by_origin[origin]

    def _choose_proxy(self, origin: tuple[str, str, int]) -> Proxy | None:
        scheme, host, port = origin
        url = self._proxies.get(scheme)
        if url is None or bypasses_proxy(host, port, self._proxies.get("no", "")):
            return None
        try:
            return parse_proxy(url)
        except InvalidProxy as exc:  # Settings.load rejects these at startup; a hand-built client may not
            raise InvalidRequest(f"{scheme} proxy {exc}") from None

    async def _connect(self, origin: tuple[str, str, int], proxy: Proxy | None) -> _Connection:
        scheme, host, port = origin
        where = f"{host}:{port}" if proxy is None else f"{host}:{port} through the proxy {proxy.host}:{proxy.port}"
        try:
            async with asyncio.timeout(self._connect_timeout):
                if proxy is not None and scheme == "https":
                    return await self._tunnel(origin, proxy)
                tls = self._tls() if scheme == "https" else None
                dial_host, dial_port = (host, port) if proxy is None else (proxy.host, proxy.port)
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: _Connection(origin), dial_host, dial_port, ssl=tls, server_hostname=host if tls else None)
                return conn
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {where} took over {self._connect_timeout:.3g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to {where}: {exc}") from exc

    async def _tunnel(self, origin: tuple[str, str, int], proxy: Proxy) -> _Connection:
        """An https connection through an HTTP CONNECT tunnel, TLS negotiated end to end with the origin."""
        _, host, port = origin
        loop = asyncio.get_running_loop()
        conn = _Connection(origin)
        raw, _ = await loop.create_connection(lambda: conn, proxy.host, proxy.port)
        try:
            auth = f"proxy-authorization: {proxy.authorization}\r\n" if proxy.authorization else ""
            conn.send(f"CONNECT {host}:{port} HTTP/1.1\r\nhost: {host}:{port}\r\n{auth}\r\n".encode("latin-1"), b"")
            try:
                while not conn.headers_done:
                    await conn.wait()
            except RemoteClosed:
                raise ConnectError(f"the proxy {proxy.host}:{proxy.port} closed the tunnel to {host}:{port}") from None
            if conn.status != 200:
                raise ConnectError(f"the proxy {proxy.host}:{proxy.port} refused the tunnel to {host}:{port}: "
                                   f"HTTP {conn.status}")
            # From here on the proxy relays bytes; our protocol now sits on top of TLS.
            tls = await loop.start_tls(raw, conn, self._tls(), server_hostname=host)
            if tls is None:  # pragma: no cover - only when the loop cannot do TLS at all
                raise ConnectError("this event loop cannot start TLS")
        except BaseException:
            raw.close()
            raise
        conn.connection_made(tls)
        return conn

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()  # loads the CA bundle once, on first use
        return self._ssl_context

    def _release(self, conn: _Connection) -> None:
        self._slots.release()
        if self._closed or not conn.reusable():
            conn.close()
            return
        conn.idle_timer = asyncio.get_running_loop().call_later(self._keepalive, self._expire, conn)
        self._idle.setdefault(conn.origin, []).append(conn)

    def _expire(self, conn: _Connection) -> None:
        conn.close()
        conns = self._idle.get(conn.origin, [])
        if conn in conns:
            conns.remove(conn)
