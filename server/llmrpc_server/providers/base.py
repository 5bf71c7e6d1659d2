"""The provider adapter interface: everything an adapter must and may do is in :class:`ProviderAdapter`.

Adapters are pure and synchronous: they turn a validated ``CompleteRequest`` into an
:class:`HttpCall`, and upstream bytes back into ``CompleteResponse`` / ``StreamCompleteResponse``
messages. They do no I/O, so they can be tested with byte fixtures; the executor owns the network.

What the gateway, not the adapter, owns (so no adapter can get it wrong):

- turning an HTTP answer into a response or an error (:func:`decode_reply`), and checking that a
  stream finished (:class:`StreamDecoder`: the adapter only says so with ``StreamState.finished``);
- hiding usage from a stream whose caller did not ask for it: adapters always report the usage the
  upstream sent, and the service hides it (``hidden_usage``) for live, cached and coalesced streams alike;
- the network: an adapter that brings its own upstream (the mock) hands the executor a
  :class:`Transport` for its URL scheme instead of being special-cased anywhere.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

from llmrpc.v1 import completion_service_pb2 as pb

from ..reasons import Reason

__all__ = [
    "ErrorKind",
    "HttpCall",
    "ProviderAdapter",
    "ProviderError",
    "StreamDecoder",
    "StreamEvent",
    "StreamState",
    "Target",
    "Transport",
    "UpstreamReply",
    "UpstreamStream",
    "decode_reply",
]

S = TypeVar("S")  # an adapter's own per-stream state


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
class StreamState(Generic[S]):
    """Per-stream state threaded through ``parse_stream_event`` calls: the fields every OpenAI-shaped
    stream needs, and ``own``, the adapter's typed state (a dataclass of its choosing; why generic
    rather than a dict of string keys: mypy checks every adapter's reads and writes of it).

    ``finished`` is the adapter's one duty at the end of a stream: set it when the upstream said the
    stream is complete (OpenAI's ``[DONE]``, Anthropic's ``message_stop``...). :class:`StreamDecoder`
    fails a stream that ends without it with ``PROVIDER_STREAM_ERROR``."""

    id: str
    created: int
    model: str
    own: S
    role_sent: set[int] = field(default_factory=set)  # choice indexes whose first delta said role=assistant
    finished: bool = False


@dataclass(slots=True)
class UpstreamReply:
    """A whole upstream HTTP response."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    latency_ms: float


class UpstreamStream(Protocol):
    """An upstream response being streamed."""

    status: int
    headers: Mapping[str, str]
    latency_ms: float

    async def read_body(self) -> bytes: ...

    async def next_events(self, timeout: float) -> list[StreamEvent] | None: ...


@runtime_checkable
class Transport(Protocol):
    """An in-process upstream the executor hands calls to instead of the network (httpx's
    ``MockTransport``): mounted for the URL scheme of the adapter's ``default_base``."""

    async def send(self, call: HttpCall, *, timeout: float) -> UpstreamReply: ...

    def stream(self, call: HttpCall, *, timeout: float) -> AbstractAsyncContextManager[UpstreamStream]: ...


@runtime_checkable
class ProviderAdapter(Protocol[S]):
    """A provider's wire codec, generic over its own per-stream state ``S``.

    Adapters subclass it (``class MyAdapter(ProviderAdapter[MyStream])``) so they inherit the
    defaults of the optional attributes and mypy checks them against it; ``tests/test_adapter_contract``
    checks every registered adapter at run time.

    Must declare:
      ``name``: the LiteLLM model prefix (``name/model``) and the provider in every response.
      ``supported_params``: the OpenAI parameters it accepts, as proto field names; the pipeline
      rejects (or drops, with drop_params) any other parameter the caller set.
      ``env_keys`` / ``env_bases``: env vars holding the server's key / base URL, first set wins.
      ``default_base``: base URL when no env var sets one ("" = the caller or config must).
      ``key_required``: whether a call without any key is refused before it is sent.

    May declare (defaults here):
      ``inline_media``: remote image URLs are downloaded and sent inline (``media``), for upstreams
      that take only inline data.
      ``transport``: an in-process upstream answering the adapter's ``default_base``; such an adapter
      never leaves the process, so a caller's ``api_base`` is not used.
      ``answers_field``: a ``CompleteRequest`` field that, when set, routes the request to this
      adapter whatever model it names (the mock takes LiteLLM's ``mock_response``).
      ``priced_as_requested``: cost is that of the provider the requested model names, not this
      adapter's (the mock, so cost tracking can be tested offline).
      ``litellm_body_keys``: LiteLLM's own arguments, never sent upstream, that this adapter's upstream
      does take from ``extra_body`` (the mock's ``mock_tool_calls``).
    """

    name: str
    supported_params: frozenset[str]
    env_keys: tuple[str, ...]
    env_bases: tuple[str, ...]
    default_base: str
    key_required: bool
    inline_media: bool = False
    transport: Transport | None = None
    answers_field: str | None = None
    priced_as_requested: bool = False
    litellm_body_keys: frozenset[str] = frozenset()

    def build_request(
        self, req: pb.CompleteRequest, target: Target, *, stream: bool, include_usage: bool = False
    ) -> HttpCall:
        """The upstream request. ``include_usage``: the caller asked for a usage chunk; only for
        upstreams that send usage on request (OpenAI's ``stream_options``); others always send it."""
        ...

    def parse_response(self, body: bytes, req: pb.CompleteRequest, target: Target) -> pb.CompleteResponse:
        """A 2xx body as a response (with usage); raise :class:`ProviderError` for an error body."""
        ...

    def new_stream_state(self, req: pb.CompleteRequest, target: Target) -> StreamState[S]:
        """Fresh state for one stream (a retry gets a new one)."""
        ...

    def parse_stream_event(self, event: StreamEvent, state: StreamState[S]) -> Iterable[pb.StreamCompleteResponse]:
        """The chunks one event makes (any number); set ``state.finished`` at the stream's end and
        report usage whenever the upstream sends it."""
        ...

    def finish_stream(self, state: StreamState[S]) -> Iterable[pb.StreamCompleteResponse]:
        """Chunks held back until the upstream closed the stream (usually none)."""
        ...

    def map_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        """A non-2xx answer as a classified error (see ``common.classify``)."""
        ...


def decode_reply(adapter: ProviderAdapter[Any], reply: UpstreamReply, req: pb.CompleteRequest,
                 target: Target) -> pb.CompleteResponse:
    """A whole upstream answer as a response, or the adapter's classified error for a non-2xx one."""
    if not 200 <= reply.status < 300:
        raise adapter.map_error(reply.status, reply.headers, reply.body)
    return adapter.parse_response(reply.body, req, target)


class StreamDecoder(Generic[S]):
    """One adapter over one upstream stream: :meth:`feed` each event, then :meth:`close`. The only
    place the end-of-stream contract is enforced."""

    __slots__ = ("_adapter", "state")

    def __init__(self, adapter: ProviderAdapter[S], req: pb.CompleteRequest, target: Target) -> None:
        self._adapter = adapter
        self.state = adapter.new_stream_state(req, target)

    def feed(self, event: StreamEvent) -> Iterable[pb.StreamCompleteResponse]:
        return self._adapter.parse_stream_event(event, self.state)

    def close(self) -> Iterator[pb.StreamCompleteResponse]:
        """The adapter's held-back chunks; then PROVIDER_STREAM_ERROR unless it saw the stream finish
        (a connection that closed early looks like a clean end of the body)."""
        yield from self._adapter.finish_stream(self.state)
        if not self.state.finished:
            raise ProviderError(ErrorKind.STREAM_ERROR, "the upstream stream ended before it finished")
