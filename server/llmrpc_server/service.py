"""The gRPC handlers: validate -> pipeline -> respond. Thin on purpose; every failure is mapped
to a status in one place (:meth:`CompletionService._errors`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from .config import Settings
from .errors import ServiceError, from_provider_error, internal_error, to_status
from .params import openai_name
from .pipeline import Backend
from .providers.base import ProviderError
from .retry import Deadline
from .router import Router
from .validation import validate_request

__all__ = ["CompletionService"]

log = logging.getLogger("llmrpc_server")


class CompletionService(pb_grpc.CompletionServiceServicer):
    """``llmrpc.v1.CompletionService``."""

    def __init__(self, backend: Backend, router: Router, settings: Settings) -> None:
        self._backend = backend
        self._router = router
        self._settings = settings

    async def Complete(self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext) -> pb.CompleteResponse:  # type: ignore[type-arg]  # noqa: N802
        async with _errors(context):
            validate_request(request)
            return await self._backend.complete(request, self._deadline(request, context))
        raise AssertionError("unreachable: _errors aborts")

    async def StreamComplete(  # noqa: N802
        self, request: pb.StreamCompleteRequest, context: grpc.aio.ServicerContext  # type: ignore[type-arg]
    ) -> AsyncIterator[pb.StreamCompleteResponse]:
        # An async generator, not context.write(): the OTel aio interceptor breaks on the latter.
        async with _errors(context):
            req = request.request
            validate_request(req, prefix="request.")
            include_usage = request.stream_options.include_usage
            async for chunk in self._backend.stream(req, self._deadline(req, context), include_usage=include_usage):
                yield chunk

    async def GetSupportedParams(  # noqa: N802
        self, request: pb.GetSupportedParamsRequest, context: grpc.aio.ServicerContext  # type: ignore[type-arg]
    ) -> pb.GetSupportedParamsResponse:
        async with _errors(context):
            adapter, name = self._router.split(request.model)
            params = sorted({openai_name(p) for p in adapter.supported_params} | {"stream", "stream_options"})
            return pb.GetSupportedParamsResponse(provider=adapter.name, provider_model=name, supported_params=params)
        raise AssertionError("unreachable: _errors aborts")

    def _deadline(self, req: pb.CompleteRequest, context: grpc.aio.ServicerContext) -> Deadline:  # type: ignore[type-arg]
        return Deadline.smallest(
            caller_remaining=context.time_remaining(),
            timeout=req.timeout if req.HasField("timeout") else None,
            server_default=self._settings.default_timeout,
        )


@asynccontextmanager
async def _errors(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:  # type: ignore[type-arg]
    """Abort with the mapped status for every failure; AbortError and cancellation pass through."""
    try:
        yield
    except ServiceError as err:
        await context.abort_with_status(to_status(err))
    except ProviderError as err:  # raised before any attempt, e.g. a missing API key
        await context.abort_with_status(to_status(from_provider_error(err, None, attempts=0)))
    except grpc.aio.AbortError:
        raise
    except Exception as exc:  # our bug: INTERNAL with ErrorInfo, never UNKNOWN
        log.exception("internal error")
        await context.abort_with_status(to_status(internal_error(exc)))

