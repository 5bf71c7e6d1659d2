"""One call from validated request to answer: attempt the route the call resolved (``resolve``)
with retries, fall back, and record every attempt. The executor does the I/O; adapters do the
translation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from llmrpc.v1 import completion_service_pb2 as pb

from .config import Settings
from .deployments import DeploymentTable, ModelGroup
from .egress import AddressCheck, EgressRefused
from .errors import ServiceError, from_provider_error
from .executor import Executor, UpstreamStream, egress_refused
from .media import MediaInliner
from .observability.counters import (
    DEADLINE_EXCEEDED,
    FALLBACKS,
    RETRIES,
    STREAM_IDLE_TIMEOUTS,
    STREAMS_BROKEN,
    Counters,
)
from .observability.spans import attempt_span, record_chunk, record_response
from .providers.base import ErrorKind, HttpCall, ProviderError, StreamDecoder, StreamEvent, Target, decode_reply
from .redaction import origin, scrub_error
from .resolve import Call
from .retry import Deadline, backoff_delay
from .router import Route

__all__ = ["AttemptLog", "FallbackPlan", "Pipeline"]


class AttemptLog:
    """Every upstream attempt of one call, in order."""

    def __init__(self) -> None:
        self.attempts: list[pb.Attempt] = []
        self.last_target: Target | None = None

    def add(self, target: Target, started: float, error: ProviderError | None = None) -> None:
        attempt = pb.Attempt(
            model=target.requested_model, provider=target.provider,
            outcome="ok" if error is None else error.kind.value,
            latency_ms=(time.perf_counter() - started) * 1000.0,
        )
        if target.deployment:
            attempt.deployment = target.deployment
        self.last_target = target
        if error is not None and error.status is not None:
            attempt.upstream_http_status = error.status
        self.attempts.append(attempt)

    def summary(self) -> str:
        """``model (provider): outcome; ...`` for a failure's ErrorInfo metadata (``model
        (provider, deployment id): outcome`` for a model-group deployment)."""
        return "; ".join(f"{a.model} ({a.provider}{', ' + a.deployment if a.deployment else ''}): {a.outcome}"
                         for a in self.attempts)

    def metadata(self, target: Target, latency_ms: float | None, request_id: str | None) -> pb.ResponseMetadata:
        meta = pb.ResponseMetadata(
            provider=target.provider, provider_model=target.model, attempts=len(self.attempts),
            attempt_log=self.attempts, api_base=origin(target.api_base),
        )
        if latency_ms is not None:
            meta.upstream_latency_ms = latency_ms
        if request_id:
            meta.provider_request_id = request_id
        return meta


class FallbackPlan:
    """Which model to try next after a model's retries are spent (LiteLLM semantics): a
    context-window error takes ``context_window_fallbacks``, a content-policy refusal
    ``content_policy_fallbacks``, anything else the general ``fallbacks``; each list comes from the
    request, else from the server setting of the same name for the requested model."""

    def __init__(self, req: pb.CompleteRequest, settings: Settings, model: str | None = None) -> None:
        model = model or req.model  # a model_group_alias is resolved to its group first
        self._general = list(req.fallbacks) or list(settings.fallbacks.get(model, ()))
        self._lists = {
            ErrorKind.CONTEXT_WINDOW: (list(req.context_window_fallbacks)
                                       or list(settings.context_window_fallbacks.get(model, ()))),
            ErrorKind.CONTENT_POLICY: (list(req.content_policy_fallbacks)
                                       or list(settings.content_policy_fallbacks.get(model, ()))),
        }
        self._tried = {model}

    def next_model(self, error: ProviderError) -> str | None:
        for candidates in (self._lists.get(error.kind, []), self._general):
            while candidates:
                model = candidates.pop(0)
                if model not in self._tried:
                    self._tried.add(model)
                    return model
        return None


class Pipeline:
    """Runs calls. One instance per server process, created inside the serving loop."""

    def __init__(self, executor: Executor, settings: Settings) -> None:
        self._executor = executor
        self._settings = settings
        self._egress = settings.egress_policy()
        self._media = MediaInliner(executor, settings.fetch_media, int(settings.fetch_media_max_mb * 1024 * 1024))
        self.counters = Counters()

    def reconfigure(self, settings: Settings, table: DeploymentTable | None) -> None:
        """A reloaded config: calls that start from now on use it (the table reaches calls through
        ``resolve.Resolver``)."""
        self._settings = settings

    async def complete(self, call: Call, deadline: Deadline) -> pb.CompleteResponse:
        log = AttemptLog()
        plan: FallbackPlan | None = None  # built on the first failure: most calls never need it
        req = call.req
        model = req.model
        while True:
            target: Target | None = None
            try:
                group = call.group(model)
                if group is not None:
                    return await self._group_unary(group, call, deadline, log)
                route, creq = call.route(model)
                target = route.target
                _require_key(route)
                creq = await self._media.inline(route.adapter, creq, deadline)
                return await self._unary_with_retries(route, creq, deadline, log)
            except EgressRefused as refused:
                raise egress_refused(refused) from None
            except ProviderError as err:
                plan = plan or FallbackPlan(req, self._settings, call.primary())
                model = self._fallback_model(plan, err, deadline)
                if not model:
                    raise self._failure(err, target or log.last_target, log, deadline) from err

    async def stream(self, call: Call, deadline: Deadline, *,
                     include_usage: bool) -> AsyncIterator[pb.StreamCompleteResponse]:
        """Chunks of the first model that starts streaming; a fallback or retry is possible only
        until the first chunk has reached the caller."""
        log = AttemptLog()
        plan: FallbackPlan | None = None  # built on the first failure: most calls never need it
        req = call.req
        model = req.model
        while True:
            target: Target | None = None
            try:
                group = call.group(model)
                if group is not None:
                    async for chunk in self._group_stream(group, call, deadline, log, include_usage):
                        yield chunk
                    return
                route, creq = call.route(model)
                target = route.target
                _require_key(route)
                creq = await self._media.inline(route.adapter, creq, deadline)
                async for chunk in self._stream_with_retries(route, creq, deadline, log, include_usage):
                    yield chunk
                return
            except EgressRefused as refused:
                raise egress_refused(refused) from None
            except _Committed as committed:
                self.counters.incr(STREAMS_BROKEN, committed.error.kind.value)
                raise self._failure(committed.error, target or log.last_target, log, deadline) from committed.error
            except ProviderError as err:
                plan = plan or FallbackPlan(req, self._settings, call.primary())
                model = self._fallback_model(plan, err, deadline)
                if not model:
                    raise self._failure(err, target or log.last_target, log, deadline) from err

    def _retries(self, req: pb.CompleteRequest) -> int:
        return req.num_retries if req.HasField("num_retries") else self._settings.num_retries

    async def _unary_with_retries(self, route: Route, req: pb.CompleteRequest, deadline: Deadline,
                                  log: AttemptLog) -> pb.CompleteResponse:
        retries = self._retries(req)
        for n in range(retries + 1):
            started = time.perf_counter()
            try:
                resp, latency, request_id = await self._unary_once(route, req, deadline)
            except ProviderError as err:
                log.add(route.target, started, err)
                await self._pause_or_raise(err, n, retries, deadline)
                continue
            log.add(route.target, started)
            resp.metadata.CopyFrom(log.metadata(route.target, latency, request_id))
            if not resp.model:
                resp.model = route.target.model
            return resp
        raise AssertionError("unreachable: the last attempt raises or returns")

    async def _group_unary(self, group: ModelGroup, call: Call, deadline: Deadline,
                           log: AttemptLog) -> pb.CompleteResponse:
        """Attempts over a model group: each picks a deployment by the strategy, and a retryable
        failure retries on another deployment when one is available (at once: no backoff needed)."""
        retries = self._retries(call.req)
        for n in range(retries + 1):
            candidate = group.pick()
            route, creq = call.deployment(candidate)
            _require_key(route)
            creq = await self._media.inline(route.adapter, creq, deadline)
            dep = candidate.deployment
            started = time.perf_counter()
            group.started(dep)
            try:
                attempt_deadline = _attempt_deadline(deadline, dep.timeout)
                resp, latency, request_id = await self._unary_once(route, creq, attempt_deadline)
            except ProviderError as err:
                group.failed(dep, err)
                log.add(route.target, started, err)
                await self._pause_or_raise(err, n, retries, deadline, immediate=group.has_alternative())
                continue
            except BaseException:
                group.failed(dep, None)
                raise
            group.succeeded(dep, time.perf_counter() - started, resp.usage.total_tokens)
            log.add(route.target, started)
            resp.metadata.CopyFrom(log.metadata(route.target, latency, request_id))
            if not resp.model:
                resp.model = route.target.model
            return resp
        raise AssertionError("unreachable: the last attempt raises or returns")

    async def _group_stream(self, group: ModelGroup, call: Call, deadline: Deadline, log: AttemptLog,
                            include_usage: bool) -> AsyncIterator[pb.StreamCompleteResponse]:
        """:meth:`_group_unary` for streams: another deployment only until the first chunk is sent."""
        retries = self._retries(call.req)
        for n in range(retries + 1):
            candidate = group.pick()
            route, creq = call.deployment(candidate)
            _require_key(route)
            creq = await self._media.inline(route.adapter, creq, deadline)
            dep = candidate.deployment
            started = time.perf_counter()
            sent, tokens = False, 0
            seen: dict[str, str] = {}
            group.started(dep)
            try:
                attempt_deadline = _attempt_deadline(deadline, dep.stream_timeout or dep.timeout)
                async for chunk in self._stream_once(route, creq, attempt_deadline, include_usage, seen):
                    if not sent:
                        log.add(route.target, started)
                        first_chunk_ms = (time.perf_counter() - started) * 1000.0
                        chunk.metadata.CopyFrom(log.metadata(route.target, first_chunk_ms, seen.get("request_id")))
                        sent = True
                    tokens = chunk.usage.total_tokens or tokens
                    yield chunk
                if not sent:
                    log.add(route.target, started)
            except ProviderError as err:
                group.failed(dep, err)
                if sent:
                    raise _Committed(err) from err
                log.add(route.target, started, err)
                await self._pause_or_raise(err, n, retries, deadline, immediate=group.has_alternative())
                continue
            except BaseException:
                group.failed(dep, None)
                raise
            group.succeeded(dep, time.perf_counter() - started, tokens)
            return

    async def _unary_once(self, route: Route, req: pb.CompleteRequest,
                          deadline: Deadline) -> tuple[pb.CompleteResponse, float, str | None]:
        adapter, target = route.adapter, route.target
        with attempt_span(target, req, stream=False) as span:
            call = adapter.build_request(req, target, stream=False)
            try:
                reply = await self._executor.send(call, timeout=_time_left(deadline),
                                                  address_check=self._address_check(target))
                resp = decode_reply(adapter, reply, req, target)
            except ProviderError as err:
                scrub_error(err, call)  # before the span, logs, callbacks or the caller see it
                raise
            record_response(span, resp)
        request_id = reply.headers.get("x-request-id") or reply.headers.get("request-id")
        return resp, reply.latency_ms, request_id

    async def _pause_or_raise(self, err: ProviderError, n: int, retries: int, deadline: Deadline,
                              *, immediate: bool = False) -> None:
        """Sleep before retry ``n + 1``, or raise ``err`` when it is not retryable or retries are
        spent; ``immediate``: the retry goes to another deployment, which need not wait."""
        if not err.kind.retryable or n >= retries:
            raise err
        delay = 0.0 if immediate else backoff_delay(n, err.retry_after)
        if delay >= deadline.remaining():
            raise err
        self.counters.incr(RETRIES, err.kind.value)
        await asyncio.sleep(delay)

    async def _stream_with_retries(self, route: Route, req: pb.CompleteRequest, deadline: Deadline,
                                   log: AttemptLog, include_usage: bool) -> AsyncIterator[pb.StreamCompleteResponse]:
        retries = self._retries(req)
        for n in range(retries + 1):
            started = time.perf_counter()
            sent = False
            seen: dict[str, str] = {}
            try:
                async for chunk in self._stream_once(route, req, deadline, include_usage, seen):
                    if not sent:
                        log.add(route.target, started)
                        first_chunk_ms = (time.perf_counter() - started) * 1000.0
                        chunk.metadata.CopyFrom(log.metadata(route.target, first_chunk_ms, seen.get("request_id")))
                        sent = True
                    yield chunk
                if not sent:
                    log.add(route.target, started)
                return
            except ProviderError as err:
                if sent:
                    raise _Committed(err) from err
                log.add(route.target, started, err)
                await self._pause_or_raise(err, n, retries, deadline)

    async def _stream_once(self, route: Route, req: pb.CompleteRequest, deadline: Deadline,
                           include_usage: bool, seen: dict[str, str]) -> AsyncIterator[pb.StreamCompleteResponse]:
        """One streamed attempt; ``seen["request_id"]`` gets the upstream's request id header."""
        adapter, target = route.adapter, route.target
        idle = self._settings.stream_idle_timeout
        with attempt_span(target, req, stream=True) as span:
            call = adapter.build_request(req, target, stream=True, include_usage=include_usage)
            try:
                async with self._open_stream(call, deadline, self._address_check(target)) as upstream:
                    if not 200 <= upstream.status < 300:
                        raise adapter.map_error(upstream.status, upstream.headers, await upstream.read_body())
                    request_id = upstream.headers.get("x-request-id") or upstream.headers.get("request-id")
                    if request_id:
                        seen["request_id"] = request_id
                    decoder = StreamDecoder(adapter, req, target)
                    while (events := await self._next_events(upstream, idle, deadline)) is not None:
                        for event in events:
                            for chunk in decoder.feed(event):
                                record_chunk(span, chunk)
                                yield chunk
                    for chunk in decoder.close():  # raises unless the adapter saw the stream finish
                        record_chunk(span, chunk)
                        yield chunk
            except ProviderError as err:
                scrub_error(err, call)  # before the span, logs, callbacks or the caller see it
                raise

    @asynccontextmanager
    async def _open_stream(self, call: HttpCall, deadline: Deadline,
                           check: AddressCheck | None) -> AsyncIterator[UpstreamStream]:
        """The executor's stream; waiting for the response headers counts as idle time too."""
        idle, remaining = self._settings.stream_idle_timeout, _time_left(deadline)
        opened = False
        try:
            async with self._executor.stream(call, timeout=min(idle, remaining), address_check=check,
                                             total_timeout=remaining) as upstream:
                opened = True
                yield upstream
        except ProviderError as err:
            if opened or err.kind is not ErrorKind.TIMEOUT or remaining <= idle:
                raise
            self.counters.incr(STREAM_IDLE_TIMEOUTS, "headers")
            raise ProviderError(ErrorKind.IDLE_TIMEOUT, f"no response headers within {idle:g}s") from err

    def _address_check(self, target: Target) -> AddressCheck | None:
        """The connect-time address check for a base URL the caller named (the server's own bases
        are trusted)."""
        return self._egress.check(target.api_base) if target.base_from_caller else None

    def _failure(self, err: ProviderError, target: Target | None, log: AttemptLog,
                 deadline: Deadline) -> ServiceError:
        caller = err.kind is ErrorKind.TIMEOUT and deadline.source == "caller" and deadline.remaining() <= 0.1
        if caller:
            self.counters.incr(DEADLINE_EXCEEDED, err.kind.value)
        failure = from_provider_error(err, target, attempts=len(log.attempts), caller_deadline=caller)
        if log.attempts:
            failure.metadata["attemptLog"] = log.summary()
        return failure


    def _fallback_model(self, plan: FallbackPlan, err: ProviderError, deadline: Deadline) -> str:
        """The next model to try after ``err`` spent a model's retries; "" when none is left or time is up."""
        model = plan.next_model(err) if deadline.remaining() > 0 else None
        if model:
            self.counters.incr(FALLBACKS, err.kind.value)
        return model or ""

    async def _next_events(self, upstream: UpstreamStream, idle: float,
                           deadline: Deadline) -> list[StreamEvent] | None:
        """The next batch of events, bounded by the idle timeout and the call's deadline."""
        remaining = _time_left(deadline)
        try:
            return await upstream.next_events(min(idle, remaining))
        except TimeoutError:
            if remaining <= idle:
                raise ProviderError(ErrorKind.TIMEOUT, "the call's deadline passed while streaming") from None
            self.counters.incr(STREAM_IDLE_TIMEOUTS, "body")
            raise ProviderError(ErrorKind.IDLE_TIMEOUT, f"no data from the upstream for {idle:g}s") from None


class _Committed(Exception):
    """A failure after the first chunk reached the caller: no retry or fallback is possible."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(error.message)
        self.error = error


def _attempt_deadline(deadline: Deadline, timeout: float | None) -> Deadline:
    """The call's deadline, tightened by a deployment's own ``timeout`` for one attempt."""
    if timeout is None:
        return deadline
    expires = time.monotonic() + timeout
    return deadline if deadline.expires_at <= expires else Deadline(expires, "timeout")


def _require_key(route: Route) -> None:
    if route.adapter.key_required and not route.target.api_key:
        names = " or ".join(route.adapter.env_keys)
        raise ProviderError(ErrorKind.API_KEY_MISSING,
                            f"no API key for {route.adapter.name}: provider keys live on the llmrpc gateway, "
                            f"so set {names} in the gateway's environment and restart it (or pass api_key)",
                            env_vars=tuple(route.adapter.env_keys))


def _time_left(deadline: Deadline) -> float:
    remaining = deadline.remaining()
    if remaining <= 0:
        raise ProviderError(ErrorKind.TIMEOUT, "the call's deadline passed before the upstream answered")
    return remaining
