"""The provider adapter interface.

Adapters are pure and synchronous: they turn a validated ``CompleteRequest`` into an
:class:`HttpCall`, and upstream bytes back into ``CompleteResponse`` / ``StreamCompleteResponse``
messages. They do no I/O, so they can be tested with byte fixtures; the executor owns the network.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from llmrpc.v1 import completion_service_pb2 as pb

from ..reasons import Reason

__all__ = [
    "ErrorKind",
    "HttpCall",
    "ProviderAdapter",
    "ProviderError",
    "StreamEvent",
    "StreamState",
    "Target",
]


class ErrorKind(enum.Enum):
    """What went wrong upstream; values are the ErrorInfo reasons (``reasons.Reason``)."""

    BAD_REQUEST = Reason.PROVIDER_BAD_REQUEST
    CONTEXT_WINDOW = Reason.CONTEXT_WINDOW_EXCEEDED
    CONTENT_POLICY = Reason.CONTENT_POLICY_VIOLATION
    AUTH = Reason.PROVIDER_AUTH_FAILED
    PERMISSION = Reason.PROVIDER_PERMISSION_DENIED
    API_KEY_MISSING = Reason.PROVIDER_API_KEY_MISSING
    NOT_FOUND = Reason.MODEL_NOT_FOUND
    CONFLICT = Reason.PROVIDER_CONFLICT
    TOO_LARGE = Reason.REQUEST_TOO_LARGE
    UNPROCESSABLE = Reason.PROVIDER_UNPROCESSABLE
    RATE_LIMIT = Reason.RATE_LIMITED
    QUOTA = Reason.QUOTA_EXCEEDED
    UNAVAILABLE = Reason.PROVIDER_UNAVAILABLE
    OVERLOADED = Reason.PROVIDER_OVERLOADED
    TIMEOUT = Reason.PROVIDER_TIMEOUT
    UNREACHABLE = Reason.PROVIDER_UNREACHABLE
    BAD_RESPONSE = Reason.PROVIDER_BAD_RESPONSE
    STREAM_ERROR = Reason.PROVIDER_STREAM_ERROR
    IDLE_TIMEOUT = Reason.STREAM_IDLE_TIMEOUT

    @property
    def retryable(self) -> bool:
        """True when the same call may succeed if sent again (OpenAI SDK rules: 408/409/429/5xx)."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {
        ErrorKind.CONFLICT,
        ErrorKind.RATE_LIMIT,
        ErrorKind.UNAVAILABLE,
        ErrorKind.OVERLOADED,
        ErrorKind.TIMEOUT,
        ErrorKind.UNREACHABLE,
        ErrorKind.IDLE_TIMEOUT,
        ErrorKind.STREAM_ERROR,
        ErrorKind.BAD_RESPONSE,
    }
)


class ProviderError(Exception):
    """An upstream failure, already classified. Only ``errors.py`` turns it into a gRPC status."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
        error_code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        env_vars: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.error_type = error_type
        self.error_code = error_code
        self.param = param
        self.request_id = request_id
        self.env_vars = env_vars  # API_KEY_MISSING: where the server looks for a key (ErrorInfo `envVars`)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one call goes: resolved by the router from the model string, env and request overrides."""

    provider: str
    model: str
    api_base: str
    api_key: str | None
    api_version: str | None = None
    key_from_caller: bool = False
    requested_model: str = ""
    base_from_caller: bool = False  # api_base came from the request: the egress policy applies
    deployment: str = ""  # the model-group deployment's id (never its key); "" outside model groups


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One upstream HTTP request, built by an adapter and sent by the executor."""

    url: str
    headers: Mapping[str, str]
    body: Any
    stream_format: Literal["sse", "ndjson"] = "sse"
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One decoded stream event: an SSE event (``event`` name, ``data``) or one NDJSON line."""

    data: str
    event: str | None = None


@dataclass(slots=True)
class StreamState:
    """Per-stream scratch space threaded through ``parse_stream_event`` calls."""

    id: str
    created: int
    model: str
    include_usage: bool
    role_sent: set[int] = field(default_factory=set)
    tool_index: dict[Any, int] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class ProviderAdapter(Protocol):
    """A provider's wire codec. ``supported_params`` lists the OpenAI parameter names it accepts;
    the service rejects (or drops, with drop_params) any other parameter the caller set."""

    name: str
    supported_params: frozenset[str]
    env_keys: tuple[str, ...]
    env_bases: tuple[str, ...]
    default_base: str
    key_required: bool

    def build_request(
        self, req: pb.CompleteRequest, target: Target, *, stream: bool, include_usage: bool = False
    ) -> HttpCall: ...

    def new_stream_state(self, req: pb.CompleteRequest, target: Target, *, include_usage: bool) -> StreamState: ...

    def parse_response(self, body: bytes, req: pb.CompleteRequest, target: Target) -> pb.CompleteResponse: ...

    def parse_stream_event(self, event: StreamEvent, state: StreamState) -> Iterable[pb.StreamCompleteResponse]: ...

    def finish_stream(self, state: StreamState) -> Iterable[pb.StreamCompleteResponse]: ...

    def map_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError: ...
