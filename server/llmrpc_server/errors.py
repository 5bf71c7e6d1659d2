"""Every failure becomes one ``google.rpc.Status`` here, and only here.

Exception tree::

    ServiceError            a failure with its gRPC code, ErrorInfo reason, metadata and details
    providers.ProviderError an upstream failure, classified by ErrorKind -> from_provider_error()

Each status carries exactly one ``ErrorInfo`` (domain ``llmrpc.dev``) plus, where they apply,
``RetryInfo``, ``BadRequest`` field violations, ``QuotaFailure`` and ``ResourceInfo`` (AIP-193).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from .providers.base import ErrorKind, ProviderError, Target
from .reasons import Reason

__all__ = [
    "DOMAIN",
    "ServiceError",
    "from_provider_error",
    "internal_error",
    "invalid_argument",
    "to_status",
]

DOMAIN = "llmrpc.dev"

_CODES: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.CONTEXT_WINDOW: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.CONTENT_POLICY: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNPROCESSABLE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.AUTH: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.PERMISSION: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.API_KEY_MISSING: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.CONFLICT: grpc.StatusCode.ABORTED,
    ErrorKind.RATE_LIMIT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.QUOTA: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.OVERLOADED: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.TIMEOUT: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.UNREACHABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.BAD_RESPONSE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.STREAM_ERROR: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.IDLE_TIMEOUT: grpc.StatusCode.UNAVAILABLE,
}


@dataclass
class ServiceError(Exception):
    """A failure ready to be sent: code, reason and everything the details need."""

    code: grpc.StatusCode
    reason: Reason
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    details: list[ProtoMessage] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}"

    def prefixed(self, prefix: str) -> ServiceError:
        """The same error with ``prefix`` before every field it names (``request.`` in a stream)."""
        if not prefix:
            return self
        details: list[ProtoMessage] = []
        for detail in self.details:
            if isinstance(detail, error_details_pb2.BadRequest):
                detail = error_details_pb2.BadRequest(field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=prefix + v.field, description=v.description)
                    for v in detail.field_violations])
            details.append(detail)
        meta = dict(self.metadata)
        if "field" in meta:
            meta["field"] = prefix + meta["field"]
        message = prefix + self.message if "field" in self.metadata else self.message
        return ServiceError(self.code, self.reason, message, meta, details)


def invalid_argument(violations: Sequence[tuple[str, str]], *, reason: Reason = Reason.INVALID_REQUEST,
                     metadata: Mapping[str, str] | None = None) -> ServiceError:
    """INVALID_ARGUMENT naming every offending field (``BadRequest.field_violations``)."""
    bad = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations]
    )
    first_field, first_desc = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    meta = {"field": first_field, **(metadata or {})}
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, reason, f"{first_field}: {first_desc}{more}", meta, [bad])


def internal_error(exc: BaseException) -> ServiceError:
    """A broken invariant: our bug. The message names the exception type, never its secrets."""
    return ServiceError(grpc.StatusCode.INTERNAL, Reason.INTERNAL_ERROR, f"internal error ({type(exc).__name__})")


def from_provider_error(err: ProviderError, target: Target | None, *, attempts: int,
                        caller_deadline: bool = False) -> ServiceError:
    """The one upstream-failure -> gRPC mapping table (documented in the README's Errors table)."""
    code = _CODES[err.kind]
    if err.kind in (ErrorKind.AUTH, ErrorKind.PERMISSION) and target is not None and not target.key_from_caller:
        code = grpc.StatusCode.FAILED_PRECONDITION  # the server's own key is wrong: not the caller's fault
    if err.kind is ErrorKind.TIMEOUT and caller_deadline:
        code = grpc.StatusCode.DEADLINE_EXCEEDED
    meta = _metadata(err, target, attempts)
    details: list[ProtoMessage] = []
    if err.retry_after is not None:
        details.append(error_details_pb2.RetryInfo(retry_delay=_duration(err.retry_after)))
    if err.kind in (ErrorKind.RATE_LIMIT, ErrorKind.QUOTA):
        subject = f"provider:{target.provider}" if target else "provider"
        details.append(error_details_pb2.QuotaFailure(
            violations=[error_details_pb2.QuotaFailure.Violation(subject=subject, description=err.message[:200])]))
    if err.kind is ErrorKind.NOT_FOUND and target is not None:
        details.append(error_details_pb2.ResourceInfo(
            resource_type="model", resource_name=target.requested_model or target.model,
            owner=target.provider, description=err.message[:200]))
    if err.param and code is grpc.StatusCode.INVALID_ARGUMENT:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=err.param, description=err.message[:200])]))
    prefix = f"{target.provider}: " if target else ""
    return ServiceError(code, err.kind.value, f"{prefix}{err.message}", meta, details)


def _metadata(err: ProviderError, target: Target | None, attempts: int) -> dict[str, str]:
    meta: dict[str, str] = {"attempts": str(attempts)}
    if target is not None:
        meta["provider"] = target.provider
        meta["model"] = target.requested_model or target.model
    optional = {
        "upstreamHttpStatus": err.status,
        "providerErrorType": err.error_type,
        "providerErrorCode": err.error_code,
        "param": err.param,
        "providerRequestId": err.request_id,
        "envVars": ",".join(err.env_vars) or None,
    }
    meta.update({k: str(v) for k, v in optional.items() if v is not None})
    return meta


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


def to_status(err: ServiceError) -> grpc.Status:
    """The wire status; code and message come from one Status object, as grpcio-status requires."""
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    packed = []
    for detail in [info, *err.details]:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    status = status_pb2.Status(code=err.code.value[0], message=err.message, details=packed)
    return rpc_status.to_status(status)
