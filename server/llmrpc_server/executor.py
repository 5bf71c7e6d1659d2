"""The only module that sends upstream requests.

Adapters build :class:`HttpCall` objects; the executor sends them with pyreqwest (Rust reqwest and
hyper: HTTP/1.1 framing, 1xx interim responses, HTTP/2 where TLS offers it, gzip/br/zstd/deflate,
proxies) and turns every transport failure into a :class:`ProviderError` in
:func:`map_transport_error`. A URL whose scheme has a mounted :class:`~.providers.base.Transport`
(an in-process upstream an adapter brings, such as the mock's) goes to that transport instead.

Limits, all enforced here: a response head over hyper's bound (~400 KiB or 100 headers) fails the
call; a body may not exceed ``max_response_bytes`` *decoded*, counted chunk by chunk while it is
decompressed, so a gzip bomb stops at the cap; at most ``max_connections`` requests are in flight and
at most ``max_connections_per_host`` to one origin, so one slow base URL cannot starve the rest.

A call may carry an :class:`~.egress.AddressCheck` (a caller-chosen URL): the host is resolved here,
every address checked (:class:`~.egress.EgressRefused` if one fails, nothing sent), and the request goes
through a client pinned to exactly those addresses (``ClientBuilder.resolve``), so DNS cannot answer
differently between the check and the connect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache, partial
from urllib.parse import urlsplit

import grpc
from google.rpc import error_details_pb2
from pyreqwest import exceptions as rx
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.proxy import ProxyBuilder
from pyreqwest.request import StreamRequest
from pyreqwest.response import Response

from .egress import AddressCheck, EgressRefused
from .errors import ServiceError
from .proto_json import dumps
from .providers.base import (
    ErrorKind,
    HttpCall,
    ProviderError,
    StreamEvent,
    Transport,
    UpstreamReply,
    UpstreamStream,
)
from .reasons import Reason
from .sse import make_decoder

__all__ = ["Executor", "UpstreamReply", "UpstreamStream", "egress_refused", "map_transport_error"]

_USER_AGENT = "llmrpc/0.1"
_KEEPALIVE = timedelta(seconds=15)  # idle pooled connections are closed after this
_PINNED_CLIENTS = 32  # clients pinned to checked addresses kept for reuse (least recently used evicted)


class Executor:
    """Sends :class:`HttpCall` objects. Create and close it inside the serving event loop: the HTTP
    client's Tokio runtime belongs to this process and must never cross a fork. ``transports``: the
    in-process upstreams to use instead of the network, by URL scheme (``providers.transports``)."""

    def __init__(self, *, max_connections: int = 1000, connect_timeout: float = 10.0,
                 max_response_bytes: int = 64 * 1024 * 1024, proxies: Mapping[str, str] | None = None,
                 max_connections_per_host: int = 0, stream_idle_timeout: float | None = None,
                 transports: Mapping[str, Transport] | None = None) -> None:
        self._transports = dict(transports or {})
        self._proxies = dict(proxies or {})
        self._idle = stream_idle_timeout
        self._max_connections = max_connections
        self._per_host = max_connections_per_host or max_connections
        self._connect_timeout = connect_timeout
        self.max_response_bytes = max_response_bytes
        self._client: Client | None = None
        self._stream_client: Client | None = None
        self._pinned: OrderedDict[tuple[str, tuple[str, ...], bool], _Pinned] = OrderedDict()
        self._hosts: dict[tuple[str, str, int], _HostSlot] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._client = self._build(streaming=False)
        self._stream_client = self._build(streaming=True)

    async def close(self) -> None:
        clients = [c for c in (self._client, self._stream_client) if c is not None]
        clients += [p.client for p in self._pinned.values()]
        self._client = self._stream_client = None
        self._pinned.clear()
        for client in clients:
            await client.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        # pyreqwest completes an awaitable from its Tokio thread, which still holds a Python thread
        # state for a moment after waking us; an interpreter that exits within that moment aborts
        # (PyO3 before CPython 3.14). One short pause lets that thread leave Python first.
        await asyncio.sleep(0.02)

    def _default_client(self, streaming: bool) -> Client:
        client = self._stream_client if streaming else self._client
        if client is None:
            raise RuntimeError("Executor.start() was not awaited")
        return client

    async def send(self, call: HttpCall, *, timeout: float, address_check: AddressCheck | None = None,
                   ) -> UpstreamReply:
        """One unary request; the whole exchange is bounded by ``timeout`` seconds."""
        if (transport := self._mounted(call.url)) is not None:
            return await transport.send(call, timeout=timeout)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout), self._open(call.method, call.url, call.headers, dumps(call.body),
                                                            address_check, total=timeout) as resp:
                body = await _read_bounded(resp, self.max_response_bytes)
                return UpstreamReply(resp.status, resp.headers, body, _ms_since(started))
        except (rx.PyreqwestError, OSError, TimeoutError) as exc:
            raise map_transport_error(exc, timeout=timeout) from exc

    async def fetch(self, url: str, *, timeout: float, max_bytes: int, address_check: AddressCheck | None = None,
                    ) -> UpstreamReply:
        """``GET url`` (a caller's media URL, see ``media``), the body bounded by ``max_bytes``;
        redirects are the caller's to follow."""
        started = time.perf_counter()
        headers = {"accept": "image/*, application/pdf;q=0.9, */*;q=0.5"}
        try:
            async with asyncio.timeout(timeout), self._open("GET", url, headers, b"", address_check,
                                                            total=timeout) as resp:
                body = await _read_bounded(resp, max_bytes)
                return UpstreamReply(resp.status, resp.headers, body, _ms_since(started))
        except (rx.PyreqwestError, OSError, TimeoutError) as exc:
            raise map_transport_error(exc, timeout=timeout) from exc

    @asynccontextmanager
    async def stream(self, call: HttpCall, *, timeout: float, address_check: AddressCheck | None = None,
                     total_timeout: float | None = None) -> AsyncIterator[UpstreamStream]:
        """Open a streamed request; ``timeout`` bounds the wait for response headers, ``total_timeout``
        (the call's deadline) the whole exchange, and the stream idle timeout every read."""
        if (transport := self._mounted(call.url)) is not None:
            async with transport.stream(call, timeout=timeout) as mounted:
                yield mounted
            return
        started = time.perf_counter()
        async with AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(timeout):
                    resp = await stack.enter_async_context(self._open(
                        call.method, call.url, call.headers, dumps(call.body), address_check, total=total_timeout,
                        streaming=True))
            except (rx.PyreqwestError, OSError, TimeoutError) as exc:
                raise map_transport_error(exc, timeout=timeout) from exc
            # Leaving (also by cancellation) closes the response: its connection is reused only if the
            # body was read to its end.
            yield _HttpStream(resp, call.stream_format, _ms_since(started), self.max_response_bytes)

    def _mounted(self, url: str) -> Transport | None:
        if not self._transports:
            return None
        scheme, sep, _ = url.partition("://")
        return self._transports.get(scheme.lower()) if sep else None

    @asynccontextmanager
    async def _open(self, method: str, url: str, headers: Mapping[str, str], body: bytes,
                    check: AddressCheck | None, *, total: float | None, streaming: bool = False,
                    ) -> AsyncIterator[Response]:
        """The response, once its head has arrived, holding one of the origin's connection slots."""
        origin = _origin(url)
        pinned = await self._pin(origin, check, streaming) if check is not None else None
        client = pinned.client if pinned is not None else self._default_client(streaming)
        slot = self._hosts.get(origin) or self._hosts.setdefault(origin, _HostSlot(self._per_host))
        slot.users += 1
        release = partial(self._release, origin, slot, pinned)
        try:
            await slot.semaphore.acquire()
        except BaseException:
            release(acquired=False)
            raise
        request = client.request(method, url).headers(headers)
        if body or method not in ("GET", "HEAD"):
            request = request.body_bytes(body)
        if total is not None:  # also ends the request on pyreqwest's side, which a cancellation does not
            request = request.timeout(timedelta(seconds=max(total, 0.001)))
        if streaming:  # hand over the head at once, then each chunk as it arrives
            request = request.streamed_read_buffer_limit(0)
        exchange = request.build_streamed()
        opening = asyncio.get_running_loop().create_task(exchange.__aenter__())
        try:
            # Shielded: pyreqwest keeps a cancelled request running until its head arrives or its
            # timeout passes, so the slot is given back only then (see _abandon).
            resp = await asyncio.shield(opening)
        except BaseException:
            opening.add_done_callback(partial(_abandon, exchange, release))
            raise
        try:
            yield resp
        finally:
            try:
                await exchange.__aexit__(None, None, None)  # the connection is reused only after a whole body
            finally:
                release()

    def _release(self, origin: tuple[str, str, int], slot: _HostSlot, pinned: _Pinned | None, *,
                 acquired: bool = True) -> None:
        if acquired:
            slot.semaphore.release()
        slot.users -= 1
        if not slot.users and self._hosts.get(origin) is slot:
            del self._hosts[origin]
        if pinned is not None:
            pinned.users -= 1

    async def _pin(self, origin: tuple[str, str, int], check: AddressCheck, streaming: bool) -> _Pinned | None:
        """Resolve ``origin``'s host, refuse it unless every address passes ``check``, and return a
        client that connects only to those addresses (None for an IP literal: nothing to resolve)."""
        _, host, port = origin
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            _refuse_if(check, literal, host)
            return None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ProviderError(ErrorKind.UNREACHABLE, f"could not resolve {host}: {exc}") from exc
        addresses = tuple(sorted({str(info[4][0]).split("%", 1)[0] for info in infos}))
        if not addresses:
            raise ProviderError(ErrorKind.UNREACHABLE, f"{host} has no address")
        for address in addresses:
            _refuse_if(check, ipaddress.ip_address(address), host)
        key = (host.lower(), addresses, streaming)
        pinned = self._pinned.get(key)
        if pinned is None:
            pinned = self._pinned[key] = _Pinned(self._build(streaming=streaming, pin=(host, addresses)))
            self._evict()
        self._pinned.move_to_end(key)
        pinned.users += 1
        return pinned

    def _evict(self) -> None:
        idle = [key for key, p in self._pinned.items() if not p.users]
        for key in idle[:max(0, len(self._pinned) - _PINNED_CLIENTS)]:
            task = asyncio.get_running_loop().create_task(self._pinned.pop(key).client.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _build(self, *, streaming: bool, pin: tuple[str, tuple[str, ...]] | None = None) -> Client:
        """A client; the streaming one gives up on any read (head included) silent for the stream idle
        timeout, which ends a stalled request on pyreqwest's side too. Redirects are never followed
        (an LLM API does not redirect; media follows them itself, checking every hop)."""
        builder = (ClientBuilder().user_agent(_USER_AGENT).no_proxy().follow_redirects(False).referer(False)
                   .http2(True).connect_timeout(timedelta(seconds=self._connect_timeout))
                   .pool_idle_timeout(_KEEPALIVE).max_connections(self._max_connections))
        if streaming and self._idle:
            builder = builder.read_timeout(timedelta(seconds=self._idle))
        no_proxy = self._proxies.get("no") or None
        for scheme in ("http", "https"):
            if url := self._proxies.get(scheme):
                proxy = ProxyBuilder.http(url) if scheme == "http" else ProxyBuilder.https(url)
                builder = builder.proxy(proxy.no_proxy(no_proxy))
        if pin is not None:
            host, addresses = pin
            for address in addresses:  # port 0: the URL's own port
                builder = builder.resolve(host, address, 0)
        return builder.build()


@lru_cache(maxsize=1024)
def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an absolute http(s) URL: the unit of the per-host connection limit."""
    try:
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    except ValueError as exc:
        raise ProviderError(ErrorKind.BAD_REQUEST, f"invalid upstream URL {url!r}: {exc}") from None
    if origin[0] not in ("http", "https") or not origin[1]:
        raise ProviderError(ErrorKind.BAD_REQUEST, f"{url!r} is not an absolute http(s) URL")
    return origin


def _abandon(exchange: StreamRequest, release: Callable[[], None], opening: asyncio.Future[Response]) -> None:
    """A request whose caller gave up has finally ended on pyreqwest's side: close what it got and
    give its slot back."""
    if opening.cancelled() or opening.exception() is not None:
        release()
        return
    task = asyncio.get_running_loop().create_task(exchange.__aexit__(None, None, None))
    task.add_done_callback(lambda _: release())


@dataclass(eq=False, slots=True)
class _Pinned:
    client: Client
    users: int = 0


class _HostSlot:
    """The connection slots of one origin; dropped when nobody holds or waits for one."""

    __slots__ = ("semaphore", "users")

    def __init__(self, size: int) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.users = 0


def _refuse_if(check: AddressCheck, address: ipaddress.IPv4Address | ipaddress.IPv6Address, host: str) -> None:
    refused = check.refusal(host, address)
    if refused is not None:
        raise refused


def egress_refused(refused: EgressRefused) -> ServiceError:
    """PERMISSION_DENIED naming the field whose URL the server's egress policy refuses."""
    bad = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=refused.field, description=refused.message)])
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, Reason.API_BASE_NOT_ALLOWED,
                        f"{refused.field}: {refused.message}", {"field": refused.field}, [bad])


class _HttpStream:
    def __init__(self, resp: Response, stream_format: str, latency_ms: float, limit: int) -> None:
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
        except (rx.PyreqwestError, OSError, TimeoutError) as exc:
            raise map_transport_error(exc, timeout=None) from exc

    async def next_events(self, timeout: float) -> list[StreamEvent] | None:
        """The events completed by the next network read; None at EOF."""
        if self._eof:
            return None
        try:
            async with asyncio.timeout(timeout):
                chunk = await self._resp.body_reader.read_chunk()
        except TimeoutError:
            raise  # the pipeline decides: idle timeout or the call's deadline
        except (rx.PyreqwestError, OSError) as exc:
            raise map_transport_error(exc, timeout=None) from exc
        if chunk is None:
            self._eof = True
            return self._decoder.close()
        data = bytes(chunk)
        events = self._decoder.feed(data)
        self._pending = 0 if events else self._pending + len(data)
        if self._pending > self._limit:  # one endless line or event must not exhaust memory
            raise ProviderError(ErrorKind.BAD_RESPONSE,
                                f"upstream stream sent over {self._limit} bytes without completing an event")
        return events


async def _read_bounded(resp: Response, limit: int) -> bytes:
    """The whole body, decoded, failing as soon as the decoded bytes pass ``limit``: the decoder
    runs as we read, so a compressed bomb is stopped at the cap, never inflated whole."""
    length = resp.get_header("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ProviderError(ErrorKind.BAD_RESPONSE, f"upstream body of {length} bytes exceeds {limit}",
                            status=resp.status)
    chunks: list[bytes] = []
    size = 0
    reader = resp.body_reader
    while (chunk := await reader.read_chunk()) is not None:
        size += len(chunk)
        if size > limit:
            raise ProviderError(ErrorKind.BAD_RESPONSE, f"upstream body exceeds {limit} bytes decoded",
                                status=resp.status)
        chunks.append(bytes(chunk))
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def map_transport_error(exc: BaseException, *, timeout: float | None) -> ProviderError:
    """Classify a transport failure (the executor's ``map_httpcore_exceptions``)."""
    if isinstance(exc, rx.ConnectTimeoutError):
        return ProviderError(ErrorKind.TIMEOUT, f"connecting to the upstream timed out: {_causes(exc)}")
    if isinstance(exc, TimeoutError):  # asyncio's, and pyreqwest's read/write/pool timeouts
        limit = "" if timeout is None else f" within {timeout:.3g}s"
        return ProviderError(ErrorKind.TIMEOUT, f"upstream did not answer{limit}")
    if isinstance(exc, rx.BuilderError | ValueError):
        return ProviderError(ErrorKind.BAD_REQUEST, f"invalid upstream request: {_causes(exc)}")
    if isinstance(exc, rx.ConnectError):
        return ProviderError(ErrorKind.UNREACHABLE, f"cannot connect to the upstream: {_causes(exc)}")
    if isinstance(exc, rx.DecodeError):  # a head hyper refuses (too large, malformed), a bad compressed body
        return ProviderError(ErrorKind.BAD_RESPONSE, f"invalid upstream response: {_causes(exc)}")
    if isinstance(exc, rx.ReadError) and _bad_encoding(exc):
        return ProviderError(ErrorKind.BAD_RESPONSE, f"invalid upstream response: {_causes(exc)}")
    if isinstance(exc, rx.PyreqwestError | ConnectionError):
        return ProviderError(ErrorKind.UNREACHABLE, f"the upstream connection failed: {_causes(exc)}")
    return ProviderError(ErrorKind.UNREACHABLE, f"upstream connection failed: {exc!r}")


def _bad_encoding(exc: rx.ReadError) -> bool:
    """A body that does not decompress (truncated or corrupt gzip, br, zstd), as opposed to a
    connection that broke while reading it: reqwest reports both as a decode-stage read error and
    only the chain of causes tells them apart."""
    text = _causes(exc)
    return "decoding response body" in text and "reading a body from connection" not in text


def _causes(exc: BaseException) -> str:
    """pyreqwest's message plus its chain of causes (reqwest's ``source()`` errors), deduplicated."""
    details = getattr(exc, "details", None)
    causes = details.get("causes") if isinstance(details, dict) else None
    parts = [str(getattr(exc, "message", exc))]
    for cause in causes or []:
        message = str(cause.get("message", ""))
        if message and message not in parts and not message.startswith("error sending request for url"):
            parts.append(message)
    return ": ".join(parts)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
