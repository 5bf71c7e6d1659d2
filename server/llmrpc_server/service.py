"""The gRPC handlers: validate -> pipeline -> respond. Thin on purpose; every failure is mapped
to a status in one place (:func:`_abort`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError, Message
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from .backend import Backend
from .config import Settings
from .deployments import DeploymentTable, request_table, with_credentials
from .discovery import ModelFilter, group_info, list_models
from .errors import ServiceError, from_provider_error, internal_error, invalid_argument, to_status
from .hidden_usage import UsageHider
from .model_info import count_tokens, model_info
from .params import openai_name
from .providers.base import ProviderError
from .reasons import Reason
from .redaction import redact_chain
from .resolve import Call, Resolver
from .retry import Deadline
from .validation import validate_request

__all__ = ["CompletionService", "ModelFilterFactory", "Undecodable", "add_to_server"]

log = logging.getLogger("llmrpc_server")
_MAX_COUNT_BYTES = 16 << 20  # CountTokens input bound: the tokenizer runs ~3 MB/s


# The caller's allowlist of public model names, from its call context (its virtual key); None
# when the caller may use every name.
ModelFilterFactory = Callable[[grpc.aio.ServicerContext], ModelFilter | None]


class CompletionService(pb_grpc.CompletionServiceServicer):
    """``llmrpc.v1.CompletionService``."""

    def __init__(self, backend: Backend, resolver: Resolver, settings: Settings,
                 model_filter: ModelFilterFactory | None = None) -> None:
        self._backend = backend
        self._resolver = resolver  # makes each call's Call, which the backend chain resolves once
        self._router = resolver.router
        self._settings = settings
        # Virtual keys plug in here: the names a caller may see in ListModels (None: every name).
        self._model_filter = model_filter

    def set_backend(self, backend: Backend) -> None:
        """The outermost backend, composed after the service was created (``app.start_gateway``)."""
        self._backend = backend

    def reconfigure(self, settings: Settings, table: DeploymentTable | None = None) -> None:
        """A reloaded config (``reload``): the default timeout of calls that start from now on."""
        self._settings = settings

    def _check_models(self, call: Call, prefix: str = "") -> None:
        """Fallbacks must name a model group or a model some provider serves; a request's own
        ``model_list`` must be well formed. Both are checked before anything is sent."""
        req = call.req
        if call.table is None and not req.model_list:
            self._router.check_fallbacks(req, prefix=prefix)  # the common case: no model groups at all
            self._router.check_api_base(req, prefix=prefix)
            return
        if req.model_list:
            for i, dep in enumerate(request_table(req, prefix=prefix).deployments):
                if "*" in dep.model:
                    continue
                try:  # the caller-base key policy, before anything is sent
                    self._router.resolve(with_credentials(req, dep), dep.model)
                except ServiceError as err:
                    raise err.prefixed(f"{prefix}model_list[{i}].litellm_params.") from None
        elif req.api_base:  # Router.check_api_base, for the names that are not model groups
            for model in (req.model, *req.fallbacks, *req.context_window_fallbacks, *req.content_policy_fallbacks):
                if call.group(model) is None:
                    try:
                        self._router.resolve(req, model)
                    except ServiceError as err:
                        raise err.prefixed(prefix) from None
        for name in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
            for i, model in enumerate(getattr(req, name)):
                if call.group(model) is None:
                    self._router.split(model, field=f"{prefix}{name}[{i}]")

    async def Complete(self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext) -> pb.CompleteResponse:
        try:
            _require_decoded(request)
            validate_request(request)
            call = self._resolver.call(request)
            self._check_models(call)
            return await self._backend.complete(call, self._deadline(request, context))
        except Exception as exc:
            await _abort(context, exc)

    async def StreamComplete(
        self, request: pb.StreamCompleteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamCompleteResponse]:
        # An async generator, not context.write(): the OTel aio interceptor breaks on the latter.
        try:
            _require_decoded(request)
            req = request.request
            validate_request(req, prefix="request.")
            call = self._resolver.call(req)
            self._check_models(call, prefix="request.")
            include_usage = request.stream_options.include_usage
            chunks = self._backend.stream(call, self._deadline(req, context), include_usage=include_usage)
            if include_usage:
                async for chunk in chunks:
                    yield chunk
            else:  # the provider's usage still travels, as LiteLLM's hidden usage
                hider = UsageHider()
                async for chunk in chunks:
                    for out in hider.add(chunk):
                        yield out
                for out in hider.finish():
                    yield out
        except Exception as exc:
            await _abort(context, exc)

    async def GetSupportedParams(
        self, request: pb.GetSupportedParamsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSupportedParamsResponse:
        try:
            _require_decoded(request)
            resolver = self._resolver
            if resolver.table is not None and resolver.is_group(pb.CompleteRequest(), request.model):
                route, _ = resolver.prepare(pb.CompleteRequest(model=request.model), request.model)
                adapter, name = route.adapter, route.target.model
            else:
                adapter, name = self._router.split(request.model)
            params = sorted({openai_name(p) for p in adapter.supported_params} | {"stream", "stream_options"})
            return pb.GetSupportedParamsResponse(provider=adapter.name, provider_model=name, supported_params=params)
        except Exception as exc:
            await _abort(context, exc)

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTokensResponse:
        try:
            _require_decoded(request)
            if request.ByteSize() > _MAX_COUNT_BYTES:
                raise invalid_argument([("messages", f"at most {_MAX_COUNT_BYTES >> 20} MiB can be counted")])
            provider, model = self._model_of(request.model)
            # Off the event loop: a long prompt takes the tokenizer milliseconds.
            return await asyncio.to_thread(count_tokens, request, provider, model)
        except Exception as exc:
            await _abort(context, exc)

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        try:
            _require_decoded(request)
            if not request.model.strip():
                raise invalid_argument([("model", "required: name a model such as 'openai/gpt-4o'")])
            allowed = self._model_filter(context) if self._model_filter is not None else None
            if allowed is not None and not allowed(request.model):
                raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, Reason.MODEL_NOT_ALLOWED,
                                   f"this caller's key may not use model {request.model!r}",
                                   {"model": request.model, "field": "model"})
            table = self._resolver.table
            found = group_info(table, self._router, request.model) if table is not None else None
            if found is not None:  # a model group, alias or wildcard match of the proxy config
                return pb.GetModelInfoResponse(model_info=found)
            adapter, name = self._router.split(request.model)
            return pb.GetModelInfoResponse(model_info=model_info(adapter, request.model, name))
        except Exception as exc:
            await _abort(context, exc)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        try:
            _require_decoded(request)
            allowed = self._model_filter(context) if self._model_filter is not None else None
            table = self._resolver.table
            settings = self._settings
            return pb.ListModelsResponse(models=list_models(table, self._router, settings.aliases, settings.env,
                                                            allowed))
        except Exception as exc:
            await _abort(context, exc)

    def _model_of(self, model: str) -> tuple[str, str]:
        """(provider, model name) of ``model``; any name may be counted, known provider or not."""
        if not model.strip():
            return "", ""
        table = self._resolver.table
        group = table.lookup(model) if table is not None else None
        if group is not None:  # a model group counts with its first deployment's tokenizer
            model = group.candidates[0].model
        try:
            adapter, name = self._router.split(model)
        except ServiceError:
            return "", model.rsplit("/", 1)[-1]
        return adapter.name, name

    def _deadline(self, req: pb.CompleteRequest, context: grpc.aio.ServicerContext) -> Deadline:
        return Deadline.smallest(
            caller_remaining=context.time_remaining(),
            timeout=req.timeout if req.HasField("timeout") else None,
            server_default=self._settings.default_timeout,
        )


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    """Abort the call with the status ``exc`` maps to; an AbortError (already aborting) passes through.
    A plain try/except in each handler rather than a context manager: it is on every call's path."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    redact_chain(exc)  # the caller, the server span's exception event and the logs see the same text
    if isinstance(exc, ServiceError):
        status = to_status(exc)
    elif isinstance(exc, ProviderError):  # raised before any attempt, e.g. a missing API key
        status = to_status(from_provider_error(exc, None, attempts=0))
    else:  # our bug: INTERNAL with ErrorInfo, never UNKNOWN
        log.error("internal error", exc_info=exc)
        status = to_status(internal_error(exc))
    await context.abort_with_status(status)
    raise AssertionError("unreachable: abort_with_status raises AbortError")


class Undecodable:
    """A request body that is not a valid message of the method's type (corrupt wire format,
    invalid UTF-8 in a string). Handlers reject it with INVALID_ARGUMENT; left to grpcio, the
    deserializer's exception would become an UNKNOWN status."""

    def __init__(self, message_type: str, error: Exception) -> None:
        self.message_type = message_type
        self.error = error


def _require_decoded(request: object) -> None:
    if isinstance(request, Undecodable):
        raise invalid_argument([("request", f"not a valid {request.message_type} message: {request.error}")])


def _parser(cls: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    def parse(data: bytes) -> Message | Undecodable:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return Undecodable(cls.DESCRIPTOR.full_name, exc)
    return parse


def add_to_server(service: CompletionService, server: grpc.aio.Server,
                  wrap: Callable[[grpc.RpcMethodHandler], grpc.RpcMethodHandler] | None = None) -> None:
    """``add_CompletionServiceServicer_to_server`` with request parsing that never raises; ``wrap``
    (virtual keys' caller check) wraps each handler once, here, rather than on every call."""
    name = pb.DESCRIPTOR.services_by_name["CompletionService"].full_name
    handlers: dict[str, Any] = {
        "Complete": grpc.unary_unary_rpc_method_handler(
            service.Complete, _parser(pb.CompleteRequest), pb.CompleteResponse.SerializeToString),
        "StreamComplete": grpc.unary_stream_rpc_method_handler(
            service.StreamComplete, _parser(pb.StreamCompleteRequest),
            pb.StreamCompleteResponse.SerializeToString),
        "GetSupportedParams": grpc.unary_unary_rpc_method_handler(
            service.GetSupportedParams, _parser(pb.GetSupportedParamsRequest),
            pb.GetSupportedParamsResponse.SerializeToString),
        "CountTokens": grpc.unary_unary_rpc_method_handler(
            service.CountTokens, _parser(pb.CountTokensRequest), pb.CountTokensResponse.SerializeToString),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            service.GetModelInfo, _parser(pb.GetModelInfoRequest), pb.GetModelInfoResponse.SerializeToString),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            service.ListModels, _parser(pb.ListModelsRequest), pb.ListModelsResponse.SerializeToString),
    }
    if wrap is not None:
        handlers = {method: wrap(handler) for method, handler in handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
