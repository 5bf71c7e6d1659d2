"""Exceptions raised by the llmrpc client, named and shaped like LiteLLM's.

Every class subclasses the matching ``openai`` exception, so code written for
``litellm`` or the OpenAI SDK (``except openai.RateLimitError``) keeps working::

    openai.OpenAIError
    └── openai.APIError
        ├── APIError                          (generic; .status_code from the gateway)
        ├── APIResponseValidationError        (openai.APIResponseValidationError)
        ├── openai.APIConnectionError
        │   ├── APIConnectionError            (500; gateway or upstream unreachable)
        │   └── openai.APITimeoutError
        │       └── Timeout = APITimeoutError (408)
        └── openai.APIStatusError
            ├── BadRequestError               (400, or 413 / the upstream's 4xx)
            │   ├── UnsupportedParamsError
            │   ├── ContextWindowExceededError
            │   └── ContentPolicyViolationError
            ├── AuthenticationError           (401)
            ├── PermissionDeniedError         (403)
            ├── NotFoundError                 (404)
            ├── ConflictError                 (409)
            ├── UnprocessableEntityError      (422)
            ├── RateLimitError                (429)
            ├── BudgetExceededError           (422, LiteLLM's; .current_cost, .max_budget)
            ├── InternalServerError           (500, or the upstream's 5xx / 529)
            ├── BadGatewayError               (502)
            └── ServiceUnavailableError       (503)

Besides LiteLLM's attributes (``status_code, message, llm_provider, model,
max_retries, num_retries, litellm_debug_info``) each carries what the gateway's
rich status said: ``grpc_code``, ``reason`` (the ``ErrorInfo`` reason),
``metadata`` (``ErrorInfo.metadata``), ``retry_after`` (``RetryInfo``, seconds)
and ``field_violations`` (``BadRequest``, as ``(field, description)`` pairs).

:func:`map_rpc_error` is the one place a ``grpc.RpcError`` becomes one of these; :func:`should_retry`
(``llmrpc._should_retry``, as in LiteLLM) says whether an error's ``status_code`` is worth retrying.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import grpc
import openai
import openai._exceptions as _openai_exceptions
from google.rpc import error_details_pb2, status_pb2

from ._provider_keys import missing_key_hint

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APITimeoutError",
    "AuthenticationError",
    "BadGatewayError",
    "BadRequestError",
    "BudgetExceededError",
    "ConflictError",
    "ContentPolicyViolationError",
    "ContextWindowExceededError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "Timeout",
    "UnprocessableEntityError",
    "UnsupportedParamsError",
    "map_rpc_error",
    "should_retry",
]

# openai >= 3 builds its errors from `httpx2` objects, older releases from `httpx`:
# use whichever module this openai imports so isinstance checks inside it hold.
_http: Any = getattr(_openai_exceptions, "httpx2", None) or getattr(_openai_exceptions, "httpx")  # noqa: B009

_SERVICE = "llmrpc.v1.CompletionService"
_DETAILS_KEY = "grpc-status-details-bin"
ERROR_DOMAIN = "llmrpc.dev"


class _LLMRPCError(Exception):
    """Attributes and constructor shared by every llmrpc exception."""

    default_status: ClassVar[int] = 500
    message: str
    llm_provider: str | None
    model: str | None
    max_retries: int | None
    num_retries: int | None
    litellm_debug_info: str | None
    grpc_code: grpc.StatusCode | None
    reason: str | None
    metadata: dict[str, str]
    retry_after: float | None
    field_violations: list[tuple[str, str]]

    def __init__(
        self,
        message: str,
        model: str | None = None,
        llm_provider: str | None = None,
        *,
        status_code: int | None = None,
        grpc_code: grpc.StatusCode | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        field_violations: Iterable[tuple[str, str]] = (),
        num_retries: int | None = None,
        max_retries: int | None = None,
        litellm_debug_info: str | None = None,
        target: str = "localhost",
        method: str = "Complete",
        request_id: str | None = None,
        response: Any = None,
    ) -> None:
        text = f"llmrpc.{type(self).__name__}: {message}"
        if not isinstance(response, _http.Response):  # LiteLLM lets callers pass their own
            status = status_code or self.default_status
            request = _http.Request("POST", f"grpc://{target}/{_SERVICE}/{method}")
            headers = {"x-request-id": request_id} if request_id else {}
            response = _http.Response(status, request=request, headers=headers)
        status, request = response.status_code, response.request
        violations = list(field_violations)
        meta = dict(metadata or {})
        body = {
            "message": message,
            "type": meta.get("providerErrorType") or reason,
            "code": meta.get("providerErrorCode"),
            "param": meta.get("param") or (violations[0][0] if violations else None),
        }
        self._init_openai(text, request, response, body, status)
        self.llm_provider, self.model = llm_provider, model
        self.num_retries, self.max_retries = num_retries, max_retries
        self.litellm_debug_info = litellm_debug_info
        self.grpc_code, self.reason, self.metadata = grpc_code, reason, meta
        self.retry_after, self.field_violations = retry_after, violations

    def _init_openai(self, text: str, request: Any, response: Any, body: dict[str, Any], status: int) -> None:
        # The openai base constructors take different arguments; all set .message.
        if isinstance(self, openai.APIStatusError):
            openai.APIStatusError.__init__(self, text, response=response, body=body)
        elif isinstance(self, openai.APIResponseValidationError):
            openai.APIResponseValidationError.__init__(self, response, body, message=text)
        elif isinstance(self, openai.APIConnectionError):
            openai.APIConnectionError.__init__(self, message=text, request=request)
            self.__dict__["status_code"] = status
        elif isinstance(self, openai.APIError):
            openai.APIError.__init__(self, text, request, body=body)
            self.__dict__["status_code"] = status

    def __str__(self) -> str:
        text = self.message
        if self.num_retries:
            text += f" llmrpc retried: {self.num_retries} times"
        return text


class BadRequestError(_LLMRPCError, openai.BadRequestError):
    default_status = 400


class UnsupportedParamsError(BadRequestError):
    pass


class ContextWindowExceededError(BadRequestError):
    pass


class ContentPolicyViolationError(BadRequestError):
    pass


class AuthenticationError(_LLMRPCError, openai.AuthenticationError):
    default_status = 401


class PermissionDeniedError(_LLMRPCError, openai.PermissionDeniedError):
    default_status = 403


class NotFoundError(_LLMRPCError, openai.NotFoundError):
    default_status = 404


class ConflictError(_LLMRPCError, openai.ConflictError):
    default_status = 409


class UnprocessableEntityError(_LLMRPCError, openai.UnprocessableEntityError):
    default_status = 422


class RateLimitError(_LLMRPCError, openai.RateLimitError):
    default_status = 429


class BudgetExceededError(_LLMRPCError, openai.APIStatusError):
    """The virtual key's ``max_budget`` is spent (LiteLLM's ``BudgetExceededError``: status 422, not a
    ``RateLimitError``, so retrying does not help). ``current_cost`` and ``max_budget`` are USD."""

    default_status = 422
    current_cost: float | None
    max_budget: float | None

    def __init__(self, message: str, model: str | None = None, llm_provider: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(message, model, llm_provider, **kwargs)
        self.current_cost = _float_or_none(self.metadata.get("spend"))
        self.max_budget = _float_or_none(self.metadata.get("maxBudget"))


class InternalServerError(_LLMRPCError, openai.InternalServerError):
    default_status = 500


class BadGatewayError(_LLMRPCError, openai.APIStatusError):
    default_status = 502


class ServiceUnavailableError(_LLMRPCError, openai.APIStatusError):
    default_status = 503


class Timeout(_LLMRPCError, openai.APITimeoutError):
    default_status = 408
    status_code: int


APITimeoutError = Timeout


class APIConnectionError(_LLMRPCError, openai.APIConnectionError):
    default_status = 500
    status_code: int


class APIError(_LLMRPCError, openai.APIError):
    default_status = 500
    status_code: int


class APIResponseValidationError(_LLMRPCError, openai.APIResponseValidationError):
    default_status = 500


# ErrorInfo.reason -> (class, default HTTP status, whether the upstream's status wins).
_BY_REASON: dict[str, tuple[type[_LLMRPCError], int, bool]] = {
    "INVALID_REQUEST": (BadRequestError, 400, True),
    "UNKNOWN_PROVIDER": (BadRequestError, 400, True),
    "PROVIDER_BAD_REQUEST": (BadRequestError, 400, True),
    "REQUEST_TOO_LARGE": (BadRequestError, 413, False),
    "UNSUPPORTED_PARAMETER": (UnsupportedParamsError, 400, False),
    "CONTEXT_WINDOW_EXCEEDED": (ContextWindowExceededError, 400, False),
    "CONTENT_POLICY_VIOLATION": (ContentPolicyViolationError, 400, False),
    "PROVIDER_AUTH_FAILED": (AuthenticationError, 401, False),
    "PROVIDER_API_KEY_MISSING": (AuthenticationError, 401, False),
    "API_KEY_INVALID": (AuthenticationError, 401, False),
    "PROVIDER_PERMISSION_DENIED": (PermissionDeniedError, 403, False),
    "API_BASE_NOT_ALLOWED": (PermissionDeniedError, 403, False),
    "MODEL_NOT_FOUND": (NotFoundError, 404, False),
    "PROVIDER_CONFLICT": (ConflictError, 409, False),
    "PROVIDER_UNPROCESSABLE": (UnprocessableEntityError, 422, False),
    "RATE_LIMITED": (RateLimitError, 429, False),
    "QUOTA_EXCEEDED": (RateLimitError, 429, False),
    "BUDGET_EXCEEDED": (BudgetExceededError, 422, False),
    "MODEL_NOT_ALLOWED": (PermissionDeniedError, 403, False),
    "KEY_STORE_UNAVAILABLE": (ServiceUnavailableError, 503, False),
    "PROVIDER_OVERLOADED": (InternalServerError, 529, True),
    "PROVIDER_STREAM_ERROR": (APIError, 500, True),
    "PROVIDER_BAD_RESPONSE": (APIError, 500, True),
    "PROVIDER_TIMEOUT": (Timeout, 408, False),
    "STREAM_IDLE_TIMEOUT": (Timeout, 408, False),
    "PROVIDER_UNREACHABLE": (APIConnectionError, 500, False),
    "INTERNAL_ERROR": (InternalServerError, 500, False),
}

# Without an ErrorInfo (grpc core, a proxy, an unreachable gateway): by gRPC code.
_BY_CODE: dict[grpc.StatusCode, tuple[type[_LLMRPCError], int]] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: (Timeout, 408),
    grpc.StatusCode.UNAVAILABLE: (APIConnectionError, 500),
    grpc.StatusCode.CANCELLED: (APIConnectionError, 500),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (RateLimitError, 429),
    grpc.StatusCode.UNAUTHENTICATED: (AuthenticationError, 401),
    grpc.StatusCode.PERMISSION_DENIED: (PermissionDeniedError, 403),
    grpc.StatusCode.INVALID_ARGUMENT: (BadRequestError, 400),
    grpc.StatusCode.NOT_FOUND: (NotFoundError, 404),
}


def should_retry(status_code: int) -> bool:
    """LiteLLM's ``_should_retry``: is an error with this HTTP status worth retrying? 408 (timeout), 409
    (lock), 429 (rate limit) and every 5xx are; other 4xx are the caller's to fix. (The gateway
    already retried per ``num_retries``; this is for callers that retry on their own.)"""
    return status_code in (408, 409, 429) or status_code >= 500


def map_rpc_error(
    err: grpc.RpcError, *, model: str | None, target: str, method: str = "Complete"
) -> _LLMRPCError:
    """Turn a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``) into our class.

    The class comes from ``ErrorInfo.reason`` when the gateway attached one, else
    from the gRPC status code.
    """
    code = _call_attr(err, "code") or grpc.StatusCode.UNKNOWN
    details = _parse_status(err)
    info, retry_after, violations = _unpack_details(details)
    meta = dict(info.metadata) if info is not None else {}
    reason = info.reason if info is not None else None
    # Only our own reasons pick the class; a proxy's ErrorInfo falls back to the code.
    ours = info is not None and info.domain == ERROR_DOMAIN
    cls, status = _pick_class(code, reason if ours else None, meta)
    attempts = _int_or_none(meta.get("attempts"))
    message = (details.message if details is not None else None) or _call_attr(err, "details") or code.name
    if ours and reason == "PROVIDER_API_KEY_MISSING":
        # The gateway's message says "set OPENAI_API_KEY"; a caller must learn that means *there*.
        message = f"{message}. {missing_key_hint(meta.get('provider'), target)}"
    return cls(
        message,
        meta.get("model") or model,
        meta.get("provider") or None,
        status_code=status,
        grpc_code=code,
        reason=reason,
        metadata=meta,
        retry_after=retry_after,
        field_violations=violations,
        num_retries=attempts - 1 if attempts else None,
        litellm_debug_info=f"grpc_code={code.name} reason={reason} target={target} method={method}",
        target=target,
        method=method,
    )


def _pick_class(
    code: grpc.StatusCode, reason: str | None, meta: Mapping[str, str]
) -> tuple[type[_LLMRPCError], int]:
    upstream = _int_or_none(meta.get("upstreamHttpStatus"))
    if reason == "PROVIDER_UNAVAILABLE":
        by_status: dict[int, type[_LLMRPCError]] = {503: ServiceUnavailableError, 502: BadGatewayError}
        return by_status.get(upstream or 500, InternalServerError), upstream or 500
    if reason in _BY_REASON:
        cls, status, upstream_wins = _BY_REASON[reason]
        return cls, (upstream or status) if upstream_wins else status
    return _BY_CODE.get(code, (InternalServerError, 500))


def _unpack_details(
    details: status_pb2.Status | None,
) -> tuple[error_details_pb2.ErrorInfo | None, float | None, list[tuple[str, str]]]:
    info: error_details_pb2.ErrorInfo | None = None
    retry_after: float | None = None
    violations: list[tuple[str, str]] = []
    for any_detail in details.details if details is not None else ():
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
        elif any_detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            any_detail.Unpack(retry)
            retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
        elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_detail.Unpack(bad)
            violations += [(v.field, v.description) for v in bad.field_violations]
    return info, retry_after, violations


def _parse_status(err: grpc.RpcError) -> status_pb2.Status | None:
    # Read the trailer ourselves: grpc_status.rpc_status.from_call() is sync-only
    # and raises when code/message disagree, which must not hide the real error.
    for key, value in _call_attr(err, "trailing_metadata") or ():
        if key == _DETAILS_KEY:
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a garbled trailer still leaves the gRPC code to go by
                return None
    return None


def _call_attr(err: grpc.RpcError, name: str) -> Any:
    # grpc.RpcError itself has no methods; failed calls also implement grpc.Call.
    getter = getattr(err, name, None)
    return getter() if callable(getter) else None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
