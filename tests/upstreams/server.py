"""A scriptable fake HTTP upstream that speaks real HTTP on 127.0.0.1.

Gateway tests need an upstream that behaves like a provider on the wire (real sockets, chunked bodies,
resets, stalls) rather than a mocked client, so that timeouts, cancellation and connection handling are
exercised for real. The server runs in its own thread with its own event loop, so sync tests, async tests
and a gRPC server on another loop can all talk to it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeAlias

from aiohttp import web
from multidict import CIMultiDict

Then: TypeAlias = Literal["close", "reset", "hang"]
"""How a streaming reply ends: finish the body, RST the connection, or go silent while keeping it open."""

_POLL = 0.01  # how often waits look for a departed client or a stopping server
_SHUTDOWN_TIMEOUT = 2.0  # cap on aiohttp's graceful shutdown; our replies exit well before it
_MAX_BODY = 64 * 1024 * 1024  # gateways may forward big prompts/images; aiohttp's default is 1 MiB


def dumps(obj: Any) -> str:
    """Compact JSON without ASCII escaping, the way providers put it on the wire."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def split_text(text: str) -> list[str]:
    """Split text into word-sized pieces so echoed streams have several content chunks."""
    return re.findall(r"\S+\s*|\s+", text) or [""]


@dataclass(frozen=True)
class RecordedRequest:
    """A request exactly as the fake received it, so tests can assert on what the gateway sent."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # keys lower-cased
    body: bytes
    raw_path: str = ""  # the request target's path exactly as sent (percent-encoding kept)

    def json(self) -> Any:
        """Decode the body as JSON (raises if the gateway sent something else)."""
        return json.loads(self.body)


class ClientGone(Exception):
    """The client closed the connection before the reply finished."""


class ServerStopping(Exception):
    """FakeUpstream.stop() was called while the reply was still running."""


@contextlib.contextmanager
def _client_errors() -> Iterator[None]:
    """aiohttp reports a departed client as ConnectionError; letting it escape a handler makes aiohttp
    log a traceback, so it becomes ClientGone, which the dispatcher counts quietly."""
    try:
        yield
    except ConnectionError as exc:
        raise ClientGone from exc


class Exchange:
    """One in-flight request as seen by a Reply: low-level writes that turn socket trouble into
    ClientGone/ServerStopping, so every Reply gets disconnect handling for free."""

    def __init__(
        self,
        request: web.Request,
        recorded: RecordedRequest,
        stopping: threading.Event,
        fallback: Callable[[], Reply],
    ) -> None:
        self.request = request
        self.recorded = recorded
        self.response: web.StreamResponse | None = None
        self.finished = False
        self._stopping = stopping
        self._fallback = fallback

    def fallback(self) -> Reply:
        """The reply the upstream's default handler would give to this request."""
        return self._fallback()

    @property
    def client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    def check(self) -> None:
        """Raise if the reply should stop now."""
        if self._stopping.is_set():
            raise ServerStopping
        if self.client_gone:
            raise ClientGone

    async def wait(self, seconds: float | None) -> None:
        """Sleep `seconds` (None = forever) but wake early, raising, if the client leaves or the server
        stops; plain asyncio.sleep would not notice either and would hold up shutdown."""
        if seconds is not None and seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while True:
            self.check()
            remaining = _POLL if deadline is None else deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(_POLL, remaining))

    async def prepare(self, resp: web.StreamResponse) -> None:
        """Send the status line and headers (a StreamResponse sends them immediately)."""
        self.response = resp
        with _client_errors():
            await resp.prepare(self.request)

    async def write(self, resp: web.StreamResponse, data: bytes) -> None:
        with _client_errors():
            await resp.write(data)

    async def finish(self, resp: web.StreamResponse) -> web.StreamResponse:
        """End the body cleanly; only this marks the reply as completed."""
        with _client_errors():
            await resp.write_eof()
        self.finished = True
        return resp

    def abort(self) -> None:
        """Drop the TCP connection with an RST (SO_LINGER 0), the harshest failure a client can see."""
        transport = self.request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    async def send_body(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Send a complete, content-length framed response."""
        resp = web.Response(status=status, body=body, headers=_headers(headers, content_type))
        await self.prepare(resp)
        return await self.finish(resp)

    async def stream(
        self, resp: web.StreamResponse, chunks: Sequence[bytes], delay: float, first_delay: float, then: Then
    ) -> web.StreamResponse:
        """Write chunks one by one (each its own flush), pausing as scripted, then end as `then` says."""
        await self.prepare(resp)
        await self.wait(first_delay)
        for i, chunk in enumerate(chunks):
            if i:
                await self.wait(delay)
            await self.write(resp, chunk)
        if then == "reset":
            self.abort()
            return resp
        if then == "hang":
            await self.wait(None)
        return await self.finish(resp)

    def placeholder(self) -> web.StreamResponse:
        """Something to hand back to aiohttp after the connection is already dead."""
        return self.response or web.Response(status=499)


def _headers(extra: dict[str, str], content_type: str) -> CIMultiDict[str]:
    merged: CIMultiDict[str] = CIMultiDict(extra)
    if "content-type" not in merged:
        merged["Content-Type"] = content_type
    return merged


class Reply(abc.ABC):
    """A scripted answer. Subclass and implement respond() for anything the stock replies can't do."""

    @abc.abstractmethod
    async def respond(self, ex: Exchange) -> web.StreamResponse: ...


@dataclass
class JSONReply(Reply):
    """A JSON body; a str body is sent verbatim (handy for malformed JSON)."""

    status: int = 200
    body: dict[str, Any] | list[Any] | str = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    async def respond(self, ex: Exchange) -> web.StreamResponse:
        raw = self.body if isinstance(self.body, str) else dumps(self.body)
        return await ex.send_body(self.status, raw.encode(), "application/json", self.headers)


@dataclass
class RawReply(Reply):
    """Arbitrary bytes and content type: wrong content types, garbage, huge bodies."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)

    async def respond(self, ex: Exchange) -> web.StreamResponse:
        return await ex.send_body(self.status, self.body, self.content_type, self.headers)


@dataclass
class SSEReply(Reply):
    """Server-sent events; each entry is one event's text without the trailing blank line."""

    events: list[str] = field(default_factory=list)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    first_delay: float = 0.0
    then: Then = "close"

    async def respond(self, ex: Exchange) -> web.StreamResponse:
        resp = web.StreamResponse(status=self.status, headers=_headers(self.headers, "text/event-stream"))
        chunks = [(event + "\n\n").encode() for event in self.events]
        return await ex.stream(resp, chunks, self.delay, self.first_delay, self.then)


@dataclass
class NDJSONReply(Reply):
    """Newline-delimited JSON (Ollama); str lines are sent verbatim."""

    lines: list[dict[str, Any] | str] = field(default_factory=list)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    first_delay: float = 0.0
    then: Then = "close"

    async def respond(self, ex: Exchange) -> web.StreamResponse:
        resp = web.StreamResponse(status=self.status, headers=_headers(self.headers, "application/x-ndjson"))
        chunks = [((line if isinstance(line, str) else dumps(line)) + "\n").encode() for line in self.lines]
        return await ex.stream(resp, chunks, self.delay, self.first_delay, self.then)


@dataclass
class StallReply(Reply):
    """Say nothing (not even headers) for `seconds`, then answer with `then` (default: the default
    handler's answer). Ends early if the client gives up, which is what timeout tests look for."""

    seconds: float = 3600.0
    then: Reply | None = None

    async def respond(self, ex: Exchange) -> web.StreamResponse:
        await ex.wait(self.seconds)
        return await (self.then or ex.fallback()).respond(ex)


@dataclass
class ResetReply(Reply):
    """Send headers (chunked body) and optionally some bytes, then RST the connection."""

    after_bytes: bytes = b""
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    async def respond(self, ex: Exchange) -> web.StreamResponse:
        resp = web.StreamResponse(status=self.status, headers=_headers(self.headers, self.content_type))
        await ex.prepare(resp)
        if self.after_bytes:
            await ex.write(resp, self.after_bytes)
        ex.abort()
        return resp


DefaultHandler: TypeAlias = Callable[[RecordedRequest], Reply]


def _not_scripted(req: RecordedRequest) -> Reply:
    message = f"fake upstream: no reply enqueued and no default handler for {req.method} {req.path}"
    return JSONReply(404, {"error": {"message": message, "type": "not_found"}})


class FakeUpstream:
    """A real HTTP server on 127.0.0.1:<free port>, in its own thread and event loop.

    Incoming requests are recorded, then answered by the next enqueued Reply (FIFO) or, when the
    queue is empty, by `default(request)`. Counters: `completed` = replies whose body ended cleanly;
    `disconnects` = replies cut short because the client went away (resets/hangs ended by stop() count
    as neither).
    """

    def __init__(self, default: DefaultHandler | None = None) -> None:
        self.default = default
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.completed = 0
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._error: BaseException | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FakeUpstream:
        """Start serving; returns once the port is listening."""
        if self._thread is not None:
            raise RuntimeError("FakeUpstream already started")
        self._stopping.clear()
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10) or self._error is not None:
            self._thread.join(timeout=10)
            self._thread = None
            raise RuntimeError("FakeUpstream failed to start") from self._error
        return self

    def stop(self) -> None:
        """Stop promptly: running replies are told to quit, the loop and its thread are torn down."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._stopping.set()
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._thread = self._loop = self._runner = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._port is None or self._thread is None:
            raise RuntimeError("FakeUpstream not started")
        return f"http://127.0.0.1:{self._port}"

    # ---- scripting -------------------------------------------------------------------------------
    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def reset(self) -> None:
        """Forget queued replies, recorded requests and counters (reuse across tests)."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.disconnects = 0
            self.completed = 0

    @property
    def pending(self) -> int:
        """Replies still queued (assert 0 to prove every scripted reply was consumed)."""
        return len(self._queue)

    @property
    def open_connections(self) -> int:
        """Client connections currently open, idle keep-alives included (best effort)."""
        runner = self._runner
        server = runner.server if runner is not None else None
        return len(server.connections) if server is not None else 0

    def wait_for(self, cond: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll `cond` until true; counters update on the server thread, slightly after the client sees
        the effect."""
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL)
        return True

    # ---- server thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # reported to start() in the caller's thread
            self._error = exc
            self._ready.set()
            _close_loop(loop)
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            _close_loop(loop)

    async def _startup(self) -> None:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        self._runner = runner
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = runner.addresses[0][1]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except ConnectionError:
            return web.Response(status=499)
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            raw_path=request.raw_path.split("?", 1)[0],
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
        )
        with self._lock:
            self.requests.append(rec)
            reply = self._queue.popleft() if self._queue else None
        ex = Exchange(request, rec, self._stopping, lambda: self._fallback(rec))
        return await self._play(reply or self._fallback(rec), ex)

    async def _play(self, reply: Reply, ex: Exchange) -> web.StreamResponse:
        try:
            resp = await reply.respond(ex)
        except ClientGone:
            self._count_disconnect()
            resp = ex.placeholder()
        except ServerStopping:
            ex.abort()
            resp = ex.placeholder()
        if ex.finished:
            with self._lock:
                self.completed += 1
        return resp

    def _count_disconnect(self) -> None:
        with self._lock:
            self.disconnects += 1

    def _fallback(self, rec: RecordedRequest) -> Reply:
        """The default handler's answer; a crashing handler becomes a visible 500, not a log line."""
        handler = self.default or _not_scripted
        try:
            return handler(rec)
        except Exception as exc:
            message = f"fake upstream default handler raised {exc!r}"
            return JSONReply(500, {"error": {"message": message, "type": "fake_upstream_bug"}})


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel leftovers and release the loop's executor thread so nothing outlives stop()."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()


def closed_port_url() -> str:
    """An http://127.0.0.1:PORT URL where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
