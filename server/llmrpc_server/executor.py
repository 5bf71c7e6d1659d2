"""The only module that sends upstream requests.

Adapters build :class:`HttpCall` objects; the executor sends them over one pooled
:class:`~llmrpc_server._http.HttpClient` (created inside the running loop) and turns every transport
failure into a :class:`ProviderError` in :func:`map_transport_error`. ``mock://`` URLs are answered
in-process by the mock upstream.

Why not httpx or aiohttp: on this 2-core machine httpx's default transport costs ~2.7 ms of CPU per
call against a local upstream, aiohttp ~0.25-0.3 ms and the lean pooled client in ``_http`` ~0.1 ms
(``make bench`` prints all three); the gateway's CPU budget is 1 ms per unary call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from . import _http
from .convert import dumps
from .providers.base import ErrorKind, HttpCall, ProviderError, StreamEvent
from .providers.mock import MOCK_SCHEME, MockReply, answer
from .sse import make_decoder

__all__ = ["Executor", "UpstreamReply", "UpstreamStream", "map_transport_error"]


@dataclass(slots=True)
class UpstreamReply:
    """A whole upstream HTTP response."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    latency_ms: float


class UpstreamStream(Protocol):
    """An upstream response being streamed."""

    status: int
    headers: Mapping[str, str]
    latency_ms: float

    async def read_body(self) -> bytes: ...

    async def next_events(self, timeout: float) -> list[StreamEvent] | None: ...


class Executor:
    """Sends :class:`HttpCall` objects. Create and close it inside the serving event loop."""

    def __init__(self, *, max_connections: int = 1000, connect_timeout: float = 10.0,
                 max_response_bytes: int = 64 * 1024 * 1024, proxies: Mapping[str, str] | None = None) -> None:
        self._proxies = dict(proxies or {})
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self.max_response_bytes = max_response_bytes
        self._client: _http.HttpClient | None = None

    async def start(self) -> None:
        self._client = _http.HttpClient(max_connections=self._max_connections,
                                        connect_timeout=self._connect_timeout, proxies=self._proxies)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def client(self) -> _http.HttpClient:
        if self._client is None:
            raise RuntimeError("Executor.start() was not awaited")
        return self._client

    async def send(self, call: HttpCall, *, timeout: float) -> UpstreamReply:
        """One unary request; the whole exchange is bounded by ``timeout`` seconds."""
        started = time.perf_counter()
        if call.url.startswith(MOCK_SCHEME):
            reply = answer(call)
            await _mock_delay(reply, timeout)
            return UpstreamReply(reply.status, reply.headers, reply.body, _ms_since(started))
        try:
            async with asyncio.timeout(timeout):
                resp = await self.client.request(call.method, call.url, call.headers, dumps(call.body))
                try:
                    body = await _read_bounded(resp, self.max_response_bytes)
                finally:
                    resp.close()
                return UpstreamReply(resp.status, resp.headers, body, _ms_since(started))
        except (_http.HttpError, OSError, TimeoutError) as exc:
            raise map_transport_error(exc, timeout=timeout) from exc

    async def fetch(self, url: str, *, timeout: float, max_bytes: int) -> UpstreamReply:
        """``GET url`` (a caller's media URL, see ``media``), the body bounded by ``max_bytes``;
        redirects are the caller's to follow."""
        started = time.perf_counter()
        headers = {"accept": "image/*, application/pdf;q=0.9, */*;q=0.5"}
        try:
            async with asyncio.timeout(timeout):
                resp = await self.client.request("GET", url, headers, b"")
                try:
                    body = await _read_bounded(resp, max_bytes)
                finally:
                    resp.close()
                return UpstreamReply(resp.status, resp.headers, body, _ms_since(started))
        except (_http.HttpError, OSError, TimeoutError) as exc:
            raise map_transport_error(exc, timeout=timeout) from exc

    @asynccontextmanager
    async def stream(self, call: HttpCall, *, timeout: float) -> AsyncIterator[UpstreamStream]:
        """Open a streamed request; ``timeout`` bounds the wait for response headers."""
        started = time.perf_counter()
        if call.url.startswith(MOCK_SCHEME):
            reply = answer(call)
            await _mock_delay(reply, timeout)
            yield _MockStream(reply, _ms_since(started))
            return
        try:
            async with asyncio.timeout(timeout):
                resp = await self.client.request(call.method, call.url, call.headers, dumps(call.body))
        except (_http.HttpError, OSError, TimeoutError) as exc:
            raise map_transport_error(exc, timeout=timeout) from exc
        try:
            yield _HttpStream(resp, call.stream_format, _ms_since(started), self.max_response_bytes)
        finally:
            resp.close()  # releases (or drops) the connection, also on cancellation


class _HttpStream:
    def __init__(self, resp: _http.Response, stream_format: str, latency_ms: float, limit: int) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers
        self.latency_ms = latency_ms
        self._decoder = make_decoder(stream_format)
        self._limit = limit
        self._eof = False
        self._pending = 0  # bytes read since the last complete event

    async def read_body(self) -> bytes:
        try:
            return await _read_bounded(self._resp, self._limit)
        except (_http.HttpError, OSError, TimeoutError) as exc:
            raise map_transport_error(exc, timeout=None) from exc

    async def next_events(self, timeout: float) -> list[StreamEvent] | None:
        """The events completed by the next network read; None at EOF."""
        if self._eof:
            return None
        try:
            async with asyncio.timeout(timeout):
                data = await self._resp.read_chunk()
        except TimeoutError:
            raise  # the pipeline decides: idle timeout or the call's deadline
        except (_http.HttpError, OSError) as exc:
            raise map_transport_error(exc, timeout=None) from exc
        if not data:
            self._eof = True
            return self._decoder.close()
        events = self._decoder.feed(data)
        self._pending = 0 if events else self._pending + len(data)
        if self._pending > self._limit:  # one endless line or event must not exhaust memory
            raise ProviderError(ErrorKind.BAD_RESPONSE,
                                f"upstream stream sent over {self._limit} bytes without completing an event")
        return events


@dataclass
class _MockStream:
    reply: MockReply
    latency_ms: float
    status: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    _sent: bool = False

    def __post_init__(self) -> None:
        self.status = self.reply.status
        self.headers = self.reply.headers

    async def read_body(self) -> bytes:
        return self.reply.body

    async def next_events(self, timeout: float) -> list[StreamEvent] | None:
        if self._sent:
            return None
        self._sent = True
        return [StreamEvent(data=e) for e in self.reply.events]


async def _mock_delay(reply: MockReply, timeout: float) -> None:
    if reply.delay > timeout:
        await asyncio.sleep(timeout)
        raise ProviderError(ErrorKind.TIMEOUT, f"mock upstream did not answer within {timeout:.3g}s")
    if reply.delay:
        await asyncio.sleep(reply.delay)


async def _read_bounded(resp: _http.Response, limit: int) -> bytes:
    length = resp.content_length
    if length is not None and length > limit:
        raise ProviderError(ErrorKind.BAD_RESPONSE, f"upstream body of {length} bytes exceeds {limit}",
                            status=resp.status)
    chunks: list[bytes] = []
    size = 0
    while chunk := await resp.read_chunk():
        size += len(chunk)
        if size > limit:
            raise ProviderError(ErrorKind.BAD_RESPONSE, f"upstream body exceeds {limit} bytes", status=resp.status)
        chunks.append(chunk)
    return b"".join(chunks)


def map_transport_error(exc: BaseException, *, timeout: float | None) -> ProviderError:
    """Classify a transport failure (the executor's ``map_httpcore_exceptions``)."""
    if isinstance(exc, _http.ConnectTimeout):
        return ProviderError(ErrorKind.TIMEOUT, f"connecting to the upstream timed out: {exc}")
    if isinstance(exc, TimeoutError):
        limit = "" if timeout is None else f" within {timeout:.3g}s"
        return ProviderError(ErrorKind.TIMEOUT, f"upstream did not answer{limit}")
    if isinstance(exc, _http.InvalidRequest):
        return ProviderError(ErrorKind.BAD_REQUEST, f"invalid upstream request: {exc}")
    if isinstance(exc, _http.ConnectError):
        return ProviderError(ErrorKind.UNREACHABLE, str(exc))
    if isinstance(exc, _http.RemoteClosed | _http.ProtocolError | ConnectionError):
        return ProviderError(ErrorKind.UNREACHABLE, f"the upstream connection failed: {exc}")
    return ProviderError(ErrorKind.UNREACHABLE, f"upstream connection failed: {exc!r}")


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
