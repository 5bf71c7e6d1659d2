"""The gateway's executor on aiohttp: the candidate evaluated against the executor on pyreqwest
(``server/llmrpc_server/executor.py``) and kept here so that ``python -m bench --http-clients`` can
measure both (see the README's HTTP-client paragraph for the figures and the decision).

What it changes: aiohttp closes the upstream connection as soon as the awaiting task is cancelled,
whatever stage the exchange is in (pyreqwest 0.15 runs a request whose response head has not arrived
on until its own timeout). Egress checks run in the connector's resolver (one pool per policy), so no
per-host pinned clients are needed; the response head is bounded by ``max_headers``/``max_field_size``;
aiohttp inflates compressed bodies in bounded steps (256 KiB of output per decoder call), so the
decoded-body cap stops a bomb. llhttp refuses a response with both Content-Length and
Transfer-Encoding (RFC 9112 section 6.3 allows that: "ought to be handled as an error").
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import lru_cache
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.http_exceptions import ContentEncodingError, LineTooLong
from aiohttp.resolver import ThreadedResolver
from llmrpc_server.egress import AddressCheck, EgressRefused
from llmrpc_server.executor import egress_refused
from llmrpc_server.proto_json import dumps
from llmrpc_server.providers.base import (
    ErrorKind,
    HttpCall,
    ProviderError,
    StreamEvent,
    Transport,
    UpstreamReply,
    UpstreamStream,
)
from llmrpc_server.sse import make_decoder
from yarl import URL

__all__ = ["Executor", "UpstreamReply", "UpstreamStream", "egress_refused", "map_transport_error"]

_USER_AGENT = "llmrpc/0.1"
_KEEPALIVE = 15.0  # seconds an idle pooled connection is kept
_MAX_LINE = 8190  # bytes in the status line
_MAX_FIELD = 16384  # bytes in one header field (name and value)
_MAX_HEADERS = 100  # header fields in one response head (also bounds the head to about 1.6 MiB)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Refused(Exception):
    """Raised by :class:`_CheckingResolver`; the executor names the call's field in the refusal."""

    def __init__(self, host: str, address: IPAddress) -> None:
        super().__init__(f"{host} resolves to {address}")
        self.host = host
        self.address = address


class _CheckingResolver(AbstractResolver):
    """Resolves with ``getaddrinfo`` and refuses the host unless every address passes the policy;
    aiohttp connects only to the addresses returned here, so what is checked is what is reached."""

    def __init__(self, public_only: bool) -> None:
        self._inner = ThreadedResolver()
        self._check = AddressCheck("", public_only=public_only)

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for info in found:
            address = ipaddress.ip_address(str(info["host"]).split("%", 1)[0])
            if self._check.refusal(host, address) is not None:
                raise _Refused(host, address)
        return found

    async def close(self) -> None:
        await self._inner.close()


class Executor:
    """Sends :class:`HttpCall` objects. Create and close it inside the serving event loop."""

    def __init__(self, *, max_connections: int = 1000, connect_timeout: float = 10.0,
                 max_response_bytes: int = 64 * 1024 * 1024, proxies: Mapping[str, str] | None = None,
                 max_connections_per_host: int = 0, stream_idle_timeout: float | None = None,
                 transports: Mapping[str, Transport] | None = None) -> None:
        self._transports = dict(transports or {})
        self._proxies = dict(proxies or {})
        self._no_proxy = _NoProxy(self._proxies.get("no", ""))
        self._idle = stream_idle_timeout
        self._max_connections = max_connections
        self._per_host = max_connections_per_host if 0 < max_connections_per_host < max_connections else 0
        self._connect_timeout = connect_timeout
        self.max_response_bytes = max_response_bytes
        self._tls: ssl.SSLContext | None = None
        # One pool per egress policy: None (the server's own URLs, unchecked), False (link-local and
        # metadata addresses refused), True (public addresses only).
        self._sessions: dict[bool | None, aiohttp.ClientSession] = {}

    async def start(self) -> None:
        # Built here rather than aiohttp's import-time default so that SSL_CERT_FILE/SSL_CERT_DIR as
        # set when the server starts are honoured.
        self._tls = ssl.create_default_context()
        self._session(None)

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    def _session(self, public_only: bool | None) -> aiohttp.ClientSession:
        session = self._sessions.get(public_only)
        if session is not None:
            return session
        if self._tls is None:
            raise RuntimeError("Executor.start() was not awaited")
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=self._per_host, keepalive_timeout=_KEEPALIVE,
            ssl=self._tls, resolver=ThreadedResolver() if public_only is None else _CheckingResolver(public_only))
        session = self._sessions[public_only] = aiohttp.ClientSession(
            connector=connector, headers={"user-agent": _USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
            max_line_size=_MAX_LINE, max_field_size=_MAX_FIELD, max_headers=_MAX_HEADERS)
        return session

    async def send(self, call: HttpCall, *, timeout: float, address_check: AddressCheck | None = None,
                   ) -> UpstreamReply:
        """One unary request; the whole exchange is bounded by ``timeout`` seconds."""
        if (transport := self._transports.get(call.url.partition("://")[0])) is not None:
            mounted = await transport.send(call, timeout=timeout)
            return UpstreamReply(mounted.status, mounted.headers, mounted.body, mounted.latency_ms)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout), self._open(call.method, call.url, call.headers, dumps(call.body),
                                                            address_check) as resp:
                body = await _read_bounded(resp, self.max_response_bytes)
                return UpstreamReply(resp.status, resp.headers, body, _ms_since(started))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise map_transport_error(exc, timeout=timeout) from exc

    async def fetch(self, url: str, *, timeout: float, max_bytes: int, address_check: AddressCheck | None = None,
                    ) -> UpstreamReply:
        """``GET url`` (a caller's media URL, see ``media``), the body bounded by ``max_bytes``;
        redirects are the caller's to follow."""
        started = time.perf_counter()
        headers = {"accept": "image/*, application/pdf;q=0.9, */*;q=0.5"}
        try:
            async with asyncio.timeout(timeout), self._open("GET", url, headers, b"", address_check) as resp:
                body = await _read_bounded(resp, max_bytes)
                return UpstreamReply(resp.status, resp.headers, body, _ms_since(started))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise map_transport_error(exc, timeout=timeout) from exc

    @asynccontextmanager
    async def stream(self, call: HttpCall, *, timeout: float, address_check: AddressCheck | None = None,
                     ) -> AsyncIterator[UpstreamStream]:
        """Open a streamed request; ``timeout`` bounds the wait for response headers, and the caller's
        ``next_events`` timeouts every read (leaving the context, by cancellation too, ends the request)."""
        if (transport := self._transports.get(call.url.partition("://")[0])) is not None:
            async with transport.stream(call, timeout=timeout) as mounted:
                yield mounted
            return
        started = time.perf_counter()
        opened = self._open(call.method, call.url, call.headers, dumps(call.body), address_check)
        try:
            async with asyncio.timeout(timeout):
                resp = await opened.__aenter__()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise map_transport_error(exc, timeout=timeout) from exc
        stream = _HttpStream(resp, call.stream_format, _ms_since(started), self.max_response_bytes)
        try:
            yield stream
        finally:
            await opened.__aexit__(None, None, None)

    @asynccontextmanager
    async def _open(self, method: str, url: str, headers: Mapping[str, str], body: bytes,
                    check: AddressCheck | None) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response, once its head has arrived. Leaving closes it: its connection goes back to the
        pool only if the body was read to its end."""
        scheme, host, port = _origin(url)
        proxy = self._proxy_for(scheme, host, port)
        pool: bool | None = None
        if check is not None:
            literal = _ip_literal(host)
            if literal is not None:  # aiohttp connects to a literal without asking the resolver
                _refuse_if(check, host, literal)
            elif proxy is not None:  # the connection is to the proxy: check what this machine resolves
                await _check_resolved(check, host, port)
            else:
                pool = check.public_only
        try:
            resp = await self._session(pool).request(  # encoded: the adapters' escaping is sent verbatim
                method, URL(url, encoded=True), headers=headers,
                data=body if body or method not in ("GET", "HEAD") else None, allow_redirects=False, proxy=proxy)
        except _Refused as refused:
            raise _refusal(check, refused.host, refused.address) from None
        try:
            yield resp
        finally:
            if resp.content.is_eof():
                resp.release()
            else:
                resp.close()  # an unread body: the connection cannot be reused

    def _proxy_for(self, scheme: str, host: str, port: int) -> str | None:
        proxy = self._proxies.get(scheme)
        if proxy is None or self._no_proxy.bypass(host, port):
            return None
        return proxy


class _NoProxy:
    """``NO_PROXY``: names (and their subdomains, ``host:port``, ``*``) as the standard library reads
    them, plus IP addresses and CIDR ranges."""

    def __init__(self, value: str) -> None:
        self._value = value
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in value.split(","):
            try:
                self._networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                continue

    def bypass(self, host: str, port: int) -> bool:
        if not self._value:
            return False
        literal = _ip_literal(host)
        if literal is not None and any(literal in net for net in self._networks if net.version == literal.version):
            return True
        return bool(urllib.request.proxy_bypass_environment(f"{host}:{port}", {"no": self._value}))


@lru_cache(maxsize=1024)
def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    except ValueError as exc:
        raise ProviderError(ErrorKind.BAD_REQUEST, f"invalid upstream URL {url!r}: {exc}") from None
    if origin[0] not in ("http", "https") or not origin[1]:
        raise ProviderError(ErrorKind.BAD_REQUEST, f"{url!r} is not an absolute http(s) URL")
    return origin


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def _check_resolved(check: AddressCheck, host: str, port: int) -> None:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ProviderError(ErrorKind.UNREACHABLE, f"could not resolve {host}: {exc}") from exc
    for info in infos:
        _refuse_if(check, host, ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))


def _refuse_if(check: AddressCheck, host: str, address: IPAddress) -> None:
    refused = check.refusal(host, address)
    if refused is not None:
        raise refused


def _refusal(check: AddressCheck | None, host: str, address: IPAddress) -> EgressRefused:
    refused = check.refusal(host, address) if check is not None else None
    return refused or EgressRefused(check.field if check else "api_base", f"{host} resolves to {address}")


class _HttpStream:
    def __init__(self, resp: aiohttp.ClientResponse, stream_format: str, latency_ms: float, limit: int) -> None:
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
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise map_transport_error(exc, timeout=None) from exc

    async def next_events(self, timeout: float) -> list[StreamEvent] | None:
        """The events completed by the next network read; None at EOF."""
        if self._eof:
            return None
        try:
            async with asyncio.timeout(timeout):
                data = await self._resp.content.readany()
        except TimeoutError:
            raise  # the pipeline decides: idle timeout or the call's deadline
        except (aiohttp.ClientError, OSError) as exc:
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


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, decoded, failing as soon as the decoded bytes pass ``limit``: aiohttp decodes
    as we read, in bounded steps, so a compressed bomb is stopped at the cap, never inflated whole."""
    length = resp.content_length
    if length is not None and length > limit:
        raise ProviderError(ErrorKind.BAD_RESPONSE, f"upstream body of {length} bytes exceeds {limit}",
                            status=resp.status)
    chunks: list[bytes] = []
    size = 0
    while chunk := await resp.content.readany():
        size += len(chunk)
        if size > limit:
            raise ProviderError(ErrorKind.BAD_RESPONSE, f"upstream body exceeds {limit} bytes decoded",
                                status=resp.status)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def map_transport_error(exc: BaseException, *, timeout: float | None) -> ProviderError:
    """Classify a transport failure (the executor's ``map_httpcore_exceptions``)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ProviderError(ErrorKind.TIMEOUT, f"connecting to the upstream timed out: {_causes(exc)}")
    if isinstance(exc, TimeoutError):  # asyncio's, and aiohttp's read timeouts
        limit = "" if timeout is None else f" within {timeout:.3g}s"
        return ProviderError(ErrorKind.TIMEOUT, f"upstream did not answer{limit}")
    if isinstance(exc, aiohttp.ClientHttpProxyError):  # the proxy refused the tunnel
        return ProviderError(ErrorKind.UNREACHABLE, f"the egress proxy answered HTTP {exc.status}: {exc.message}")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return ProviderError(ErrorKind.UNREACHABLE, f"could not resolve {exc.host}: {exc.os_error}")
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, TLS verification (a ValueError too)
        return ProviderError(ErrorKind.UNREACHABLE, f"cannot connect to the upstream: {_causes(exc)}")
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        return ProviderError(ErrorKind.BAD_REQUEST, f"invalid upstream request: {_causes(exc)}")
    if isinstance(exc, aiohttp.ClientResponseError):  # a head llhttp refuses (too large, malformed)
        return ProviderError(ErrorKind.BAD_RESPONSE, f"invalid upstream response: {_head_error(exc)}")
    if isinstance(exc, aiohttp.ClientPayloadError) and _bad_encoding(exc):
        return ProviderError(ErrorKind.BAD_RESPONSE, f"invalid upstream response: {_causes(exc)}")
    if isinstance(exc, aiohttp.ClientError | ConnectionError | OSError):
        return ProviderError(ErrorKind.UNREACHABLE, f"the upstream connection failed: {_causes(exc)}")
    return ProviderError(ErrorKind.UNREACHABLE, f"upstream connection failed: {exc!r}")


def _head_error(exc: aiohttp.ClientResponseError) -> str:
    message = str(exc.message).strip()
    cause = exc.__cause__
    if isinstance(cause, LineTooLong) or "too many headers" in message.lower() or "too long" in message.lower():
        return f"the message head is too large (at most {_MAX_HEADERS} fields of {_MAX_FIELD} bytes): {message}"
    return message


def _bad_encoding(exc: aiohttp.ClientPayloadError) -> bool:
    """A body that does not decompress (truncated or corrupt gzip, br, zstd), as opposed to a
    connection that broke while reading it."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ContentEncodingError):
            return True
        cause = cause.__cause__
    return False


def _causes(exc: BaseException) -> str:
    """The message plus its chain of causes, deduplicated."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 4:
        message = str(seen) or type(seen).__name__
        if message not in parts:
            parts.append(message)
        seen = seen.__cause__
    return ": ".join(parts)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0

