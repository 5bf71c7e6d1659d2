"""Virtual keys on the call path: which key a call runs under, and the backend layer that holds it
to its ``models``, rate limits and budget.

The key is found by :class:`~llmrpc_server.keys.guard.KeyGuard` from the call's
metadata and set in :data:`CURRENT_KEY` inside the RPC's own task, so the backends (this one, the
observed backend's callbacks and spans) read it without it travelling through every signature.
Admin callers (``master_key``, ``--auth-tokens``) run with no key: nothing here applies to them.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from llmrpc.v1 import completion_service_pb2 as pb

from ..backend import Backend
from ..errors import ServiceError
from ..reasons import Reason
from ..resolve import Call
from ..retry import Deadline
from .spec import VirtualKey
from .store import Decision, LimitStore, StoreUnavailable

__all__ = ["CURRENT_KEY", "KeyedBackend", "budget_error", "current_key_alias", "current_model_filter", "denied_model",
           "limit_error"]

CURRENT_KEY: ContextVar[VirtualKey | None] = ContextVar("llmrpc_virtual_key", default=None)
log = logging.getLogger("llmrpc_server.keys")
_LEASE_PREFIX = secrets.token_hex(6) + "-"  # this process: lease ids are unique across processes and restarts
_LEASES = itertools.count()
LEASE_SLACK = 5.0  # seconds a lease outlives its call's deadline (a crashed process's lease ends then)


def current_key_alias() -> str | None:
    """The ``key_alias`` of the virtual key the current call runs under (None: admin or no keys)."""
    key = CURRENT_KEY.get()
    return key.alias if key is not None else None


def current_model_filter() -> Callable[[str], bool] | None:
    """For discovery (``ListModels``, ``GetModelInfo``): a predicate that is True for the public model
    names the current call's key may use, or None (admin, or no keys) when every name may be shown."""
    key = CURRENT_KEY.get()
    return key.allows if key is not None else None


def denied_model(key: VirtualKey, req: pb.CompleteRequest) -> ServiceError | None:
    """PERMISSION_DENIED naming the first model (requested, or a request-level fallback) outside the
    key's ``models``; fallbacks from the server's config are the operator's choice and not checked."""
    if not key.models:  # no allowlist: every model
        return None
    for name, models in (("model", [req.model]), ("fallbacks", req.fallbacks),
                         ("context_window_fallbacks", req.context_window_fallbacks),
                         ("content_policy_fallbacks", req.content_policy_fallbacks)):
        for model in models:
            if not key.allows(model):
                return ServiceError(
                    grpc.StatusCode.PERMISSION_DENIED, Reason.MODEL_NOT_ALLOWED,
                    f"key {key.alias!r} may not use model {model!r} ({name}); its models: {', '.join(key.models)}",
                    {"model": model, "field": name, "keyAlias": key.alias},
                    [error_details_pb2.ResourceInfo(resource_type="model", resource_name=model,
                                                    description=f"not in the models of key {key.alias!r}")])
    return None


def limit_error(key: VirtualKey, decision: Decision) -> ServiceError:
    """RESOURCE_EXHAUSTED for ``rpm_limit`` / ``tpm_limit`` / ``max_parallel_requests``."""
    if decision.limit == "max_budget":
        return budget_error(key, decision)
    what = {"rpm_limit": "requests this minute", "tpm_limit": "tokens this minute",
            "max_parallel_requests": "requests in flight"}[decision.limit]
    allowed = int(decision.allowed)
    message = (f"key {key.alias!r} is over its {decision.limit} of {allowed} "
               f"({int(decision.current)} {what})")
    meta = {"keyAlias": key.alias, "limit": decision.limit, "current": str(int(decision.current)),
            "allowed": str(allowed)}
    return _exhausted(Reason.RATE_LIMITED, key, decision, message, meta)


def budget_error(key: VirtualKey, decision: Decision) -> ServiceError:
    """RESOURCE_EXHAUSTED / BUDGET_EXCEEDED with the spend and the budget in the metadata."""
    window = f" in its current {key.budget_duration}s budget window" if key.budget_duration else ""
    message = (f"key {key.alias!r} has exceeded its budget: spend {decision.current:.6f} USD{window}, "
               f"max_budget {decision.allowed:g} USD")
    meta = {"keyAlias": key.alias, "limit": "max_budget", "spend": repr(decision.current),
            "maxBudget": repr(decision.allowed)}
    if key.budget_duration:
        meta["budgetDuration"] = f"{key.budget_duration}s"
    return _exhausted(Reason.BUDGET_EXCEEDED, key, decision, message, meta)


def _exhausted(reason: Reason, key: VirtualKey, decision: Decision, message: str,
               meta: dict[str, str]) -> ServiceError:
    details: list[object] = [error_details_pb2.QuotaFailure(violations=[error_details_pb2.QuotaFailure.Violation(
        subject=f"key:{key.alias}", description=f"{decision.limit} {decision.allowed:g} reached")])]
    if decision.retry_after is not None:
        wait = max(decision.retry_after, 0.0)
        details.append(error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=int(wait), nanos=int((wait % 1) * 1e9))))
        meta["retryAfter"] = f"{wait:.3f}"
        message += f"; retry in {wait:.0f}s"
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, message, meta, details)  # type: ignore[arg-type]


def _unavailable(exc: StoreUnavailable) -> ServiceError:
    # Fail closed: a key's limits are a promise to whoever pays; answering without them breaks it.
    return ServiceError(grpc.StatusCode.UNAVAILABLE, Reason.KEY_STORE_UNAVAILABLE,
                        f"virtual key limits cannot be checked right now: {exc}")


class KeyedBackend:
    """The outermost :class:`~llmrpc_server.backend.Backend` when keys are configured: a call under a
    virtual key is checked against the key's ``models``, admitted by the :class:`LimitStore` (budget,
    rpm, tpm, parallel requests), and its tokens and cost are recorded when it ends. A stream asks the
    inner backend for its usage chunk even when the caller did not, and drops it again for the caller."""

    def __init__(self, inner: Backend, store: LimitStore, clock: Callable[[], float] = time.time) -> None:
        self._inner = inner
        self._store = store
        self._clock = clock

    async def complete(self, call: Call, deadline: Deadline) -> pb.CompleteResponse:
        key = CURRENT_KEY.get()
        if key is None:
            return await self._inner.complete(call, deadline)
        lease = await self._admit(key, call.req, deadline)
        try:
            resp = await self._inner.complete(call, deadline)
        except BaseException:
            await self._release(key, lease)
            raise
        meta = resp.metadata
        await self._record(key, lease, resp.usage.total_tokens if resp.HasField("usage") else 0,
                           meta.cost_usd if meta.HasField("cost_usd") else 0.0)
        return resp

    def stream(self, call: Call, deadline: Deadline, *,
               include_usage: bool) -> AsyncIterator[pb.StreamCompleteResponse]:
        key = CURRENT_KEY.get()
        if key is None:
            return self._inner.stream(call, deadline, include_usage=include_usage)
        return self._stream(key, call, deadline, include_usage)

    async def _stream(self, key: VirtualKey, call: Call, deadline: Deadline,
                      include_usage: bool) -> AsyncIterator[pb.StreamCompleteResponse]:
        lease = await self._admit(key, call.req, deadline)
        tokens, cost = 0, 0.0
        try:
            async for chunk in self._inner.stream(call, deadline, include_usage=True):
                if chunk.HasField("usage"):
                    tokens = chunk.usage.total_tokens
                    cost = chunk.metadata.cost_usd if chunk.metadata.HasField("cost_usd") else 0.0
                    if not include_usage:
                        shown = _without_usage(chunk)
                        if shown is None:
                            continue
                        chunk = shown
                yield chunk
        except BaseException:  # failed, or cancelled (CancelledError / GeneratorExit): the slot frees now
            await self._release(key, lease)
            raise
        await self._record(key, lease, tokens, cost)

    async def _admit(self, key: VirtualKey, req: pb.CompleteRequest, deadline: Deadline) -> str:
        denied = denied_model(key, req)
        if denied is not None:
            raise denied
        lease = f"{_LEASE_PREFIX}{next(_LEASES)}" if key.max_parallel_requests is not None else ""
        if not key.limited:
            return lease
        now = self._clock()
        try:
            decision = await self._store.admit(key, now, lease, now + deadline.remaining() + LEASE_SLACK)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from None
        if not decision.admitted:
            raise limit_error(key, decision)
        return lease

    async def _record(self, key: VirtualKey, lease: str, tokens: int, cost: float) -> None:
        try:
            await self._store.record(key, self._clock(), lease, tokens, cost)
        except StoreUnavailable as exc:  # the call is answered: count what can be counted, say so
            log.warning("spend of key %r not recorded: %s", key.alias, exc)

    async def _release(self, key: VirtualKey, lease: str) -> None:
        if not lease:
            return
        try:
            await self._store.release(key, lease)
        except StoreUnavailable as exc:
            log.warning(
                "parallel slot of key %r not released (it ends at the call's deadline): %s", key.alias, exc)


def _without_usage(chunk: pb.StreamCompleteResponse) -> pb.StreamCompleteResponse | None:
    """The chunk as a caller who did not ask for usage sees it (copied: chunks may be shared)."""
    out = pb.StreamCompleteResponse()
    out.CopyFrom(chunk)
    out.ClearField("usage")
    return out if out.choices else None
