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

from .config import Settings
from .errors import ServiceError, from_provider_error, internal_error, invalid_argument, to_status
from .hidden_usage import UsageHider
from .model_info import count_tokens, model_info
from .params import openai_name
from .pipeline import Backend
from .providers.base import ProviderError
from .redaction import redact_chain
from .retry import Deadline
from .router import Router
from .validation import validate_request

__all__ = ["CompletionService", "Undecodable", "add_to_server"]

log = logging.getLogger("llmrpc_server")
_MAX_COUNT_BYTES = 16 << 20  # CountTokens input bound: the tokenizer runs ~3 MB/s


class CompletionService(pb_grpc.CompletionServiceServicer):
    """``llmrpc.v1.CompletionService``."""

    def __init__(self, backend: Backend, router: Router, settings: Settings) -> None:
        self._backend = backend
        self._router = router
        self._settings = settings

    async def Complete(self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext) -> pb.CompleteResponse:
        try:
            _require_decoded(request)
            validate_request(request)
            self._router.check_fallbacks(request)
            self._router.check_api_base(request)
            return await self._backend.complete(request, self._deadline(request, context))
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
            self._router.check_fallbacks(req, prefix="request.")
            self._router.check_api_base(req, prefix="request.")
            include_usage = request.stream_options.include_usage
            chunks = self._backend.stream(req, self._deadline(req, context), include_usage=include_usage)
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
            adapter, name = self._router.split(request.model)
            return pb.GetModelInfoResponse(model_info=model_info(adapter, request.model, name))
        except Exception as exc:
            await _abort(context, exc)

    def _model_of(self, model: str) -> tuple[str, str]:
        """(provider, model name) of ``model``; any name may be counted, known provider or not."""
        if not model.strip():
            return "", ""
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


def add_to_server(service: CompletionService, server: grpc.aio.Server) -> None:
    """``add_CompletionServiceServicer_to_server`` with request parsing that never raises."""
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
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
