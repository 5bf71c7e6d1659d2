"""LiteLLM's ``caching=True`` / ``cache={...}``, owned by the gateway: a :class:`Backend` around the
pipeline, so every client and every server process on the machine shares one answer per request.

The key is ``sha256`` over (1) canonical JSON (sorted keys) of the key version, the namespace and
the resolved route: provider, upstream model, api_base without ``user:password@``, api_version, and
when the caller brought its own api_key a SHA-256 of its credentials (:func:`credential_scope`); then
(2) the request minus :data:`EXCLUDED_FIELDS` in deterministic protobuf encoding: fields in number
order and map entries (``extra_body``, ``logit_bias``, every JSON-Schema ``Struct``) sorted by key at
every depth, so neither argument nor JSON key order matters. That encoding is used instead of
``MessageToDict`` + JSON because it costs ~5 us instead of ~30 us per call on the hit path. Excluded
are the credentials and everything that changes how the gateway calls, not what the model answers
(api_key, extra_headers, metadata, timeout, num_retries, caching, cache, the three fallback lists,
drop_params; api_base and api_version enter through the route). ``stream`` and ``include_usage`` are
not request fields, so unary calls and streams share entries.

Identical cacheable requests in flight at once make one upstream call (a "flight"): it runs in its
own task with the first caller's deadline and controls; the others wait for it, get its answer (as a
hit) or its error, and cancelling any caller - the first included - does not disturb the rest. When
every caller has gone, the flight is cancelled and nothing is stored. Streams coalesce too: a late
joiner first gets the chunks already produced. A ``no-cache`` call neither reads nor joins: it makes
its own upstream call. Errors are never stored, nor answers that came from a fallback model (they do
not answer the key's model), nor streams that did not complete. A cacheable stream always asks the
upstream for usage, so its entry can later answer callers that want the usage chunk.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

from llmrpc.v1 import completion_service_pb2 as pb

from ..accumulate import accumulate, split
from ..backend import Backend
from ..config import Settings
from ..credentials import caller_credentials
from ..errors import ServiceError, from_provider_error
from ..proto_json import canonical_json
from ..providers.base import ErrorKind, ProviderError, Target
from ..redaction import origin
from ..resolve import Call
from ..retry import Deadline
from .store import CacheEntry, CacheStore

__all__ = ["EXCLUDED_FIELDS", "CachePlan", "CachingBackend", "cache_key", "credential_scope", "decode_stream",
           "encode_stream"]

log = logging.getLogger("llmrpc_server.cache")
T = TypeVar("T")

KEY_VERSION = 1
EXCLUDED_FIELDS = (
    "api_key", "extra_headers", "metadata", "timeout", "num_retries", "caching", "cache", "fallbacks",
    "context_window_fallbacks", "content_policy_fallbacks", "drop_params",
    "api_base", "api_version",  # replaced by the resolved values
)

Stored: TypeAlias = pb.CompleteResponse | list[pb.StreamCompleteResponse]


@dataclass(frozen=True, slots=True)
class CachePlan:
    """What the cache does for one request."""

    key: str
    namespace: str
    read: bool  # look up (and join an identical in-flight call); false for no-cache
    store: bool  # store the answer; false for no-store or ttl 0
    ttl: float
    max_age: float | None  # s-maxage
    provider: str
    provider_model: str


def cache_key(req: pb.CompleteRequest, target: Target, namespace: str) -> str:
    """The hex sha256 key of a request (see the module docstring for what it covers)."""
    body = pb.CompleteRequest()
    body.CopyFrom(req)
    for name in EXCLUDED_FIELDS:
        body.ClearField(name)  # type: ignore[arg-type]  # the names are fields of CompleteRequest
    scope = credential_scope(req, target)
    digest = hashlib.sha256(_route(target.provider, target.model, target.api_base, target.api_version, namespace,
                                   scope))
    digest.update(body.SerializeToString(deterministic=True))
    return digest.hexdigest()


def credential_scope(req: pb.CompleteRequest, target: Target) -> str:
    """"" for a call on the server's own key (such calls share entries); else the SHA-256 of the
    caller's credentials (``api_key`` and credential headers), so a caller only ever gets answers its
    own credentials paid for, and a bogus key gets no answer another caller's key produced.

    Unkeyed SHA-256, domain-separated: the digest only ever enters the (also SHA-256) cache key,
    never the file by itself; an HMAC secret would have to be shared by every process that opens the
    file, so it would sit beside the file and protect nothing from whoever can read it; and testing a
    guessed key against the file also needs the exact request. Provider keys are long random strings."""
    creds = caller_credentials(target.api_key if target.key_from_caller else None, req.extra_headers)
    if not creds:
        return ""
    return hashlib.sha256(b"llmrpc cache credential scope\n" + canonical_json(creds)).hexdigest()


@functools.lru_cache(maxsize=1024)
def _route(provider: str, model: str, api_base: str, api_version: str | None, namespace: str,
           scope: str = "") -> bytes:
    """The routing half of the key: canonical JSON, newline-terminated (JSON escapes newlines, so
    the boundary with the protobuf half is unambiguous). ``scope`` enters only when set, so entries
    made on the server's keys keep the keys they always had."""
    doc = {"v": KEY_VERSION, "namespace": namespace, "provider": provider, "provider_model": model,
           "api_base": without_credentials(api_base, keep_query=True), "api_version": api_version}
    if scope:
        doc["credential_scope"] = scope
    return canonical_json(doc) + b"\n"


@functools.lru_cache(maxsize=256)
def without_credentials(url: str, *, keep_query: bool) -> str:
    """``url`` without ``user:password@`` (and without the query unless ``keep_query``)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query if keep_query else "", ""))


# ---- payloads ----------------------------------------------------------------------------------
def encode_stream(chunks: Sequence[pb.StreamCompleteResponse]) -> bytes:
    """Chunks as one blob: each a 4-byte big-endian length, then the serialized chunk."""
    out = bytearray()
    for chunk in chunks:
        data = chunk.SerializeToString()
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def decode_stream(payload: bytes) -> list[pb.StreamCompleteResponse]:
    chunks, pos = [], 0
    while pos < len(payload):
        size = int.from_bytes(payload[pos:pos + 4], "big")
        chunks.append(pb.StreamCompleteResponse.FromString(payload[pos + 4:pos + 4 + size]))
        pos += 4 + size
    return chunks


def _decode(entry: CacheEntry) -> Stored:
    if entry.kind == "stream":
        return decode_stream(entry.payload)
    if entry.kind == "response":
        return pb.CompleteResponse.FromString(entry.payload)
    raise ValueError(f"unknown cache entry kind {entry.kind!r}")


def _stored_metadata(meta: pb.ResponseMetadata) -> pb.ResponseMetadata:
    """What a stored entry remembers of how it was produced: who answered, nothing per-call."""
    out = pb.ResponseMetadata(provider=meta.provider, provider_model=meta.provider_model)
    if meta.HasField("provider_request_id"):
        out.provider_request_id = meta.provider_request_id
    if meta.HasField("api_base"):
        out.api_base = origin(meta.api_base)
    return out


def _hit_metadata(meta: pb.ResponseMetadata) -> pb.ResponseMetadata:
    out = _stored_metadata(meta)
    out.cache_hit, out.attempts, out.cost_usd = True, 0, 0.0
    return out


def _as_hit(resp: pb.CompleteResponse) -> pb.CompleteResponse:
    """A hit copy of a response other callers share (a flight's)."""
    out = pb.CompleteResponse()
    out.CopyFrom(resp)
    out.metadata.CopyFrom(_hit_metadata(resp.metadata))
    return out


def _mark_hit(meta: pb.ResponseMetadata) -> None:
    """Hit flags on the (already reduced) metadata of a freshly decoded entry."""
    meta.cache_hit, meta.attempts, meta.cost_usd = True, 0, 0.0
    if meta.HasField("api_base"):  # entries stored before metadata carried only the origin
        meta.api_base = origin(meta.api_base)


def _present(chunk: pb.StreamCompleteResponse, metadata: pb.ResponseMetadata | None) -> pb.StreamCompleteResponse:
    """A chunk as this caller sees it: ``metadata`` set if given. Usage stays: the service hides it
    (``hidden_usage``) from callers that did not ask for it, as on a live stream. Copies instead of
    mutating: the same chunk objects serve every caller of a flight."""
    if metadata is None:
        return chunk
    out = pb.StreamCompleteResponse()
    out.CopyFrom(chunk)
    out.metadata.CopyFrom(metadata)
    return out


def _replay(stored: Stored) -> list[pb.StreamCompleteResponse]:
    """A hit as a stream of the same chunk shapes, usage chunk included; the hit metadata rides on
    the first chunk."""
    if isinstance(stored, pb.CompleteResponse):
        _mark_hit(stored.metadata)
        return split(stored, include_usage=True)
    meta = _hit_metadata(stored[0].metadata) if stored else None
    return [_present(chunk, None if i else meta) for i, chunk in enumerate(stored)]


def _as_response(stored: Stored) -> pb.CompleteResponse:
    """A freshly decoded entry as a unary hit (decoded per hit, so it may be changed in place)."""
    resp = stored if isinstance(stored, pb.CompleteResponse) else accumulate(stored)
    _mark_hit(resp.metadata)
    return resp


# ---- flights -----------------------------------------------------------------------------------
class _Flight:
    """One upstream call shared by the identical requests that arrive while it runs."""

    def __init__(self, plan: CachePlan, stream: bool) -> None:
        self.plan = plan
        self.stream = stream
        self.chunks: list[pb.StreamCompleteResponse] = []
        self.response: pb.CompleteResponse | None = None
        self.error: BaseException | None = None
        self.done = False
        self.waiters = 0
        self.task: asyncio.Task[None] | None = None
        self._event = asyncio.Event()

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def changed(self, deadline: Deadline | None) -> None:
        """Wait for the next chunk or the end; a follower gives up at its own deadline."""
        if deadline is None:
            await self._event.wait()
            return
        try:
            await asyncio.wait_for(self._event.wait(), deadline.remaining())
        except TimeoutError:
            raise _timeout(deadline) from None

    def result(self) -> pb.CompleteResponse:
        if self.error is not None:
            raise self.error.with_traceback(None)  # raised in every caller: do not grow one traceback
        return self.response if self.response is not None else accumulate(self.chunks)


@asynccontextmanager
async def _closing(chunks: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close an upstream stream as soon as its reader stops, so its connection is released now."""
    try:
        yield chunks
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _timeout(deadline: Deadline) -> ServiceError:
    err = ProviderError(ErrorKind.TIMEOUT, "the call's deadline passed while an identical call was in flight")
    return from_provider_error(err, None, attempts=0, caller_deadline=deadline.source == "caller")


def _abandoned() -> ServiceError:
    err = ProviderError(ErrorKind.UNAVAILABLE, "the shared upstream call was cancelled (server stopping)")
    return from_provider_error(err, None, attempts=0)


class CachingBackend:
    """The response cache in front of ``inner`` (see the module docstring for the semantics)."""

    def __init__(self, inner: Backend, cache: CacheStore, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.clock = clock  # wall-clock seconds; tests replace it to expire entries without sleeping
        self._inner = inner
        self._settings = settings
        self._flights: dict[str, _Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def reconfigure(self, settings: Settings, table: object = None) -> None:
        """A reloaded config (``reload``): cache defaults of calls that start from now on."""
        self._settings = settings

    def plan(self, call: Call) -> CachePlan | None:
        """How the cache treats ``call``; None when it does not take part."""
        req = call.req
        if not (req.caching if req.HasField("caching") else self._settings.cache_default):
            return None
        try:  # the route the pipeline will take (for a model group: its first deployment's)
            route, _ = call.first_route(req.model)
        except (ServiceError, ProviderError):
            return None  # the pipeline raises the same error, uncached
        opts = req.cache
        ttl = opts.ttl if opts.HasField("ttl") else self._settings.cache_ttl
        read, store = not opts.no_cache, not opts.no_store and ttl > 0
        if not (read or store):
            return None
        namespace = opts.namespace or self._settings.cache_namespace
        return CachePlan(
            key=cache_key(req, route.target, namespace), namespace=namespace, read=read, store=store, ttl=ttl,
            max_age=opts.s_maxage if opts.HasField("s_maxage") else None,
            provider=route.target.provider, provider_model=route.target.model,
        )

    async def complete(self, call: Call, deadline: Deadline) -> pb.CompleteResponse:
        plan = self.plan(call)
        if plan is None:
            return await self._inner.complete(call, deadline)
        stored, flight = await self._find(plan)
        if stored is not None:
            return _as_response(stored)
        if flight is not None:
            self.cache.count("coalesced")
            return _as_hit(await self._wait(flight, deadline))
        return await self._wait(self._launch(plan, call, deadline, stream=False), None)

    async def stream(self, call: Call, deadline: Deadline, *,
                     include_usage: bool) -> AsyncIterator[pb.StreamCompleteResponse]:
        plan = self.plan(call)
        if plan is None:
            async with _closing(self._inner.stream(call, deadline, include_usage=include_usage)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        # Cached streams always carry their usage chunk: the service shows it to callers that asked
        # for include_usage and hides it (StreamCompleteResponse.hidden_usage) from the others.
        stored, flight = await self._find(plan)
        if stored is not None:
            for chunk in _replay(stored):
                yield chunk
            return
        if flight is not None:
            self.cache.count("coalesced")
        leader = flight is None
        flight = flight or self._launch(plan, call, deadline, stream=True)
        async for chunk in self._follow(flight, None if leader else deadline, leader):
            yield chunk

    async def _find(self, plan: CachePlan) -> tuple[Stored | None, _Flight | None]:
        """A stored answer, else an identical call in flight to join (checked before and after the
        lookup, which yields to the loop)."""
        if not plan.read:
            return None, None
        if (flight := self._flights.get(plan.key)) is not None:
            return None, flight
        stored = await self._lookup(plan)
        return stored, None if stored is not None else self._flights.get(plan.key)

    async def _lookup(self, plan: CachePlan) -> Stored | None:
        try:
            entry = await self.cache.get(plan.key, self.clock(), plan.max_age)
            return None if entry is None else _decode(entry)
        except Exception as exc:  # the cache never fails a request
            log.warning("response cache lookup failed, treating as a miss: %r", exc)
            return None

    def _launch(self, plan: CachePlan, call: Call, deadline: Deadline, *,
                stream: bool) -> _Flight:
        flight = _Flight(plan, stream)
        if plan.read:  # a no-cache call wants its own answer: nobody joins it
            self._flights[plan.key] = flight
        flight.task = asyncio.get_running_loop().create_task(self._fly(flight, call, deadline))
        self._tasks.add(flight.task)
        flight.task.add_done_callback(self._tasks.discard)
        return flight

    async def _fly(self, flight: _Flight, call: Call, deadline: Deadline) -> None:
        """The upstream call of a flight. A stream always asks for usage, so the stored entry can
        answer callers that want it; the service hides it from those that did not."""
        try:
            if flight.stream:
                async with _closing(self._inner.stream(call, deadline, include_usage=True)) as chunks:
                    async for chunk in chunks:
                        flight.chunks.append(chunk)
                        flight.notify()
            else:
                flight.response = await self._inner.complete(call, deadline)
        except asyncio.CancelledError:
            flight.error = _abandoned()
            raise
        except Exception as exc:
            flight.error = exc
        else:
            self._store(flight)
        finally:
            flight.done = True
            self._forget(flight)
            flight.notify()

    async def _wait(self, flight: _Flight, deadline: Deadline | None) -> pb.CompleteResponse:
        flight.waiters += 1
        try:
            while not flight.done:
                await flight.changed(deadline)
        finally:
            self._leave(flight)
        return flight.result()

    async def _follow(self, flight: _Flight, deadline: Deadline | None,
                      leader: bool) -> AsyncIterator[pb.StreamCompleteResponse]:
        """A flight's chunks as they come (all of them, for a late joiner); a unary flight is split."""
        if not flight.stream:
            for chunk in split(_as_hit(await self._wait(flight, deadline)), include_usage=True):
                yield chunk
            return
        flight.waiters += 1
        try:
            sent = 0
            while True:
                while sent < len(flight.chunks):
                    meta = None if leader or sent else _hit_metadata(flight.chunks[0].metadata)
                    sent += 1
                    yield _present(flight.chunks[sent - 1], meta)
                if flight.done:
                    break
                await flight.changed(deadline)
        finally:
            self._leave(flight)
        if flight.error is not None:
            raise flight.error.with_traceback(None)

    def _leave(self, flight: _Flight) -> None:
        """A caller is done with ``flight``; when the last one leaves early, stop the upstream call."""
        flight.waiters -= 1
        if flight.waiters == 0 and not flight.done and flight.task is not None:
            self._forget(flight)
            flight.task.cancel()

    def _forget(self, flight: _Flight) -> None:
        if self._flights.get(flight.plan.key) is flight:
            del self._flights[flight.plan.key]

    def _store(self, flight: _Flight) -> None:
        plan = flight.plan
        if not plan.store:
            return
        try:
            encoded = _encode(flight)
        except Exception as exc:
            log.warning("response cache: cannot encode the answer, not storing it: %r", exc)
            return
        if encoded is not None:
            self.cache.put(plan.key, plan.namespace, encoded[0], encoded[1], self.clock(), plan.ttl)

    async def close(self) -> None:
        """Cancel leftover flights (the server has stopped), then flush and close the cache."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.cache.close()


def _encode(flight: _Flight) -> tuple[str, bytes] | None:
    """The entry to store for a completed flight, or None when the answer must not be stored."""
    plan = flight.plan
    if flight.response is not None:
        resp = pb.CompleteResponse()
        resp.CopyFrom(flight.response)
        if not _answers(resp.metadata, plan):
            return None
        resp.metadata.CopyFrom(_stored_metadata(resp.metadata))
        return "response", resp.SerializeToString()
    if not flight.chunks:
        return None
    first = pb.StreamCompleteResponse()
    first.CopyFrom(flight.chunks[0])
    if not _answers(first.metadata, plan):
        return None
    first.metadata.CopyFrom(_stored_metadata(first.metadata))
    return "stream", encode_stream([first, *flight.chunks[1:]])


def _answers(meta: pb.ResponseMetadata, plan: CachePlan) -> bool:
    """False for an answer from a fallback model: it does not answer the key's model."""
    return not meta.provider or (meta.provider, meta.provider_model) == (plan.provider, plan.provider_model)
