"""Rich gRPC statuses from the gateway -> llmrpc exceptions (LiteLLM's names, openai's bases)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import llmrpc
import openai
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from llmrpc import exceptions
from llmrpc.v1 import completion_service_pb2, completion_service_pb2_grpc

from tests.support import GatewayThread, serve_servicer

MESSAGES = [{"role": "user", "content": "hi"}]

# ---------------------------------------------------------------- fake gateway

Handler = Callable[[Any, grpc.ServicerContext], Any]


class FakeGateway(completion_service_pb2_grpc.CompletionServiceServicer):
    """Answers every RPC with whatever handler the test installed."""

    def __init__(self) -> None:
        self.handler: Handler = lambda request, context: completion_service_pb2.CompleteResponse()
        self.requests: list[Any] = []

    def Complete(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        return self.handler(request, context)

    def StreamComplete(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self.requests.append(request)
        yield from self.handler(request, context)

    def GetSupportedParams(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        return self.handler(request, context)


@pytest.fixture(scope="module")
def gateway_server() -> Iterator[tuple[FakeGateway, str]]:
    servicer = FakeGateway()
    with serve_servicer(servicer) as address:
        yield servicer, address


@pytest.fixture
def gateway(gateway_server: tuple[FakeGateway, str]) -> FakeGateway:
    servicer, _ = gateway_server
    servicer.requests.clear()
    return servicer


@pytest.fixture
def client(gateway_server: tuple[FakeGateway, str]) -> Iterator[llmrpc.Client]:
    with llmrpc.Client(gateway_server[1]) as c:
        yield c


def rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str | None = None,
    metadata: dict[str, str] | None = None,
    retry_delay: float | None = None,
    violations: tuple[tuple[str, str], ...] = (),
) -> grpc.Status:
    details = []
    if reason is not None:
        details.append(
            _pack(error_details_pb2.ErrorInfo(reason=reason, domain="llmrpc.dev", metadata=metadata))
        )
    if retry_delay is not None:
        delay = duration_pb2.Duration(seconds=int(retry_delay), nanos=int(retry_delay % 1 * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    if violations:
        fvs = [error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations]
        details.append(_pack(error_details_pb2.BadRequest(field_violations=fvs)))
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return rpc_status.to_status(status)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def aborting(status: grpc.Status) -> Handler:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort_with_status(status)

    return handler


# ---------------------------------------------------------------- reason -> class

REASONS = [
    ("INVALID_REQUEST", grpc.StatusCode.INVALID_ARGUMENT, {}, llmrpc.BadRequestError, 400),
    ("UNKNOWN_PROVIDER", grpc.StatusCode.INVALID_ARGUMENT, {}, llmrpc.BadRequestError, 400),
    ("PROVIDER_BAD_REQUEST", grpc.StatusCode.INVALID_ARGUMENT, {}, llmrpc.BadRequestError, 400),
    (
        "PROVIDER_BAD_REQUEST",
        grpc.StatusCode.INVALID_ARGUMENT,
        {"upstreamHttpStatus": "418"},
        llmrpc.BadRequestError,
        418,
    ),
    ("REQUEST_TOO_LARGE", grpc.StatusCode.INVALID_ARGUMENT, {}, llmrpc.BadRequestError, 413),
    ("UNSUPPORTED_PARAMETER", grpc.StatusCode.INVALID_ARGUMENT, {}, llmrpc.UnsupportedParamsError, 400),
    ("CONTEXT_WINDOW_EXCEEDED", grpc.StatusCode.INVALID_ARGUMENT, {}, llmrpc.ContextWindowExceededError, 400),
    (
        "CONTENT_POLICY_VIOLATION",
        grpc.StatusCode.INVALID_ARGUMENT,
        {},
        llmrpc.ContentPolicyViolationError,
        400,
    ),
    ("PROVIDER_AUTH_FAILED", grpc.StatusCode.UNAUTHENTICATED, {}, llmrpc.AuthenticationError, 401),
    ("PROVIDER_API_KEY_MISSING", grpc.StatusCode.FAILED_PRECONDITION, {}, llmrpc.AuthenticationError, 401),
    ("API_KEY_INVALID", grpc.StatusCode.UNAUTHENTICATED, {}, llmrpc.AuthenticationError, 401),
    ("PROVIDER_PERMISSION_DENIED", grpc.StatusCode.PERMISSION_DENIED, {}, llmrpc.PermissionDeniedError, 403),
    ("MODEL_NOT_FOUND", grpc.StatusCode.NOT_FOUND, {}, llmrpc.NotFoundError, 404),
    ("PROVIDER_CONFLICT", grpc.StatusCode.ABORTED, {}, llmrpc.ConflictError, 409),
    ("PROVIDER_UNPROCESSABLE", grpc.StatusCode.INVALID_ARGUMENT, {}, llmrpc.UnprocessableEntityError, 422),
    ("RATE_LIMITED", grpc.StatusCode.RESOURCE_EXHAUSTED, {}, llmrpc.RateLimitError, 429),
    (
        "QUOTA_EXCEEDED",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        {"upstreamHttpStatus": "402"},
        llmrpc.RateLimitError,
        429,
    ),
    (
        "PROVIDER_UNAVAILABLE",
        grpc.StatusCode.UNAVAILABLE,
        {"upstreamHttpStatus": "503"},
        llmrpc.ServiceUnavailableError,
        503,
    ),
    (
        "PROVIDER_UNAVAILABLE",
        grpc.StatusCode.UNAVAILABLE,
        {"upstreamHttpStatus": "502"},
        llmrpc.BadGatewayError,
        502,
    ),
    (
        "PROVIDER_UNAVAILABLE",
        grpc.StatusCode.UNAVAILABLE,
        {"upstreamHttpStatus": "500"},
        llmrpc.InternalServerError,
        500,
    ),
    ("PROVIDER_UNAVAILABLE", grpc.StatusCode.UNAVAILABLE, {}, llmrpc.InternalServerError, 500),
    ("PROVIDER_OVERLOADED", grpc.StatusCode.UNAVAILABLE, {}, llmrpc.InternalServerError, 529),
    (
        "PROVIDER_OVERLOADED",
        grpc.StatusCode.UNAVAILABLE,
        {"upstreamHttpStatus": "503"},
        llmrpc.InternalServerError,
        503,
    ),
    ("PROVIDER_STREAM_ERROR", grpc.StatusCode.UNAVAILABLE, {}, llmrpc.APIError, 500),
    (
        "PROVIDER_BAD_RESPONSE",
        grpc.StatusCode.UNAVAILABLE,
        {"upstreamHttpStatus": "200"},
        llmrpc.APIError,
        200,
    ),
    ("PROVIDER_TIMEOUT", grpc.StatusCode.UNAVAILABLE, {}, llmrpc.Timeout, 408),
    ("PROVIDER_TIMEOUT", grpc.StatusCode.DEADLINE_EXCEEDED, {}, llmrpc.Timeout, 408),
    ("STREAM_IDLE_TIMEOUT", grpc.StatusCode.UNAVAILABLE, {}, llmrpc.Timeout, 408),
    ("PROVIDER_UNREACHABLE", grpc.StatusCode.UNAVAILABLE, {}, llmrpc.APIConnectionError, 500),
    ("INTERNAL_ERROR", grpc.StatusCode.INTERNAL, {}, llmrpc.InternalServerError, 500),
    ("SOMETHING_NEW", grpc.StatusCode.INVALID_ARGUMENT, {}, llmrpc.BadRequestError, 400),
]


@pytest.mark.parametrize(("reason", "code", "meta", "cls", "status"), REASONS)
def test_reason_picks_class_and_status(
    gateway: FakeGateway,
    client: llmrpc.Client,
    reason: str,
    code: grpc.StatusCode,
    meta: dict[str, str],
    cls: type[Exception],
    status: int,
) -> None:
    gateway.handler = aborting(rich_status(code, "upstream said no", reason, meta))
    with pytest.raises(cls) as caught:
        client.completion("openai/gpt-4o", MESSAGES)
    err: Any = caught.value
    assert type(err) is cls
    assert isinstance(err, openai.APIError)
    assert err.status_code == status
    assert err.reason == reason
    assert err.grpc_code == code
    assert err.message.startswith(f"llmrpc.{cls.__name__}: upstream said no")
    if reason == "PROVIDER_API_KEY_MISSING":  # the hint says the key belongs on the gateway
        assert "set the provider's key variable in the gateway's environment" in err.message
    else:
        assert err.message == f"llmrpc.{cls.__name__}: upstream said no"
    assert err.model == "openai/gpt-4o"  # the requested model when the gateway names none


def test_openai_bases_match_litellm() -> None:
    pairs = {
        llmrpc.BadRequestError: openai.BadRequestError,
        llmrpc.UnsupportedParamsError: openai.BadRequestError,
        llmrpc.ContextWindowExceededError: openai.BadRequestError,
        llmrpc.ContentPolicyViolationError: openai.BadRequestError,
        llmrpc.AuthenticationError: openai.AuthenticationError,
        llmrpc.PermissionDeniedError: openai.PermissionDeniedError,
        llmrpc.NotFoundError: openai.NotFoundError,
        llmrpc.ConflictError: openai.ConflictError,
        llmrpc.UnprocessableEntityError: openai.UnprocessableEntityError,
        llmrpc.RateLimitError: openai.RateLimitError,
        llmrpc.InternalServerError: openai.InternalServerError,
        llmrpc.ServiceUnavailableError: openai.APIStatusError,
        llmrpc.BadGatewayError: openai.APIStatusError,
        llmrpc.Timeout: openai.APITimeoutError,
        llmrpc.APIConnectionError: openai.APIConnectionError,
        llmrpc.APIError: openai.APIError,
        llmrpc.APIResponseValidationError: openai.APIResponseValidationError,
    }
    for ours, theirs in pairs.items():
        assert issubclass(ours, theirs), ours
    assert llmrpc.APITimeoutError is llmrpc.Timeout
    assert issubclass(llmrpc.UnsupportedParamsError, llmrpc.BadRequestError)


def test_error_info_metadata_becomes_attributes(gateway: FakeGateway, client: llmrpc.Client) -> None:
    meta = {
        "provider": "anthropic",
        "model": "anthropic/claude-x",
        "attempts": "3",
        "upstreamHttpStatus": "429",
        "providerErrorType": "rate_limit_error",
        "providerErrorCode": "too_many",
    }
    status = rich_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", "RATE_LIMITED", meta, retry_delay=1.5
    )
    gateway.handler = aborting(status)
    with pytest.raises(llmrpc.RateLimitError) as caught:
        client.completion("claude", MESSAGES)
    err = caught.value
    assert err.llm_provider == "anthropic"
    assert err.model == "anthropic/claude-x"
    assert err.num_retries == 2
    assert err.retry_after == pytest.approx(1.5)
    assert err.metadata == meta
    assert err.type == "rate_limit_error"
    assert err.code == "too_many"
    assert str(err) == "llmrpc.RateLimitError: slow down llmrpc retried: 2 times"
    assert err.litellm_debug_info is not None and "RATE_LIMITED" in err.litellm_debug_info
    assert str(err.request.url).endswith("/llmrpc.v1.CompletionService/Complete")
    assert err.response.status_code == 429


def test_bad_request_violations(gateway: FakeGateway, client: llmrpc.Client) -> None:
    violations = (("messages[2].content[0]", "unknown part type"), ("temperature", "must be <= 2"))
    status = rich_status(
        grpc.StatusCode.INVALID_ARGUMENT, "2 invalid fields", "INVALID_REQUEST", violations=violations
    )
    gateway.handler = aborting(status)
    with pytest.raises(llmrpc.BadRequestError) as caught:
        client.completion("openai/gpt-4o", MESSAGES)
    assert caught.value.field_violations == list(violations)
    assert caught.value.param == "messages[2].content[0]"
    assert caught.value.retry_after is None
    assert caught.value.num_retries is None


def test_unsupported_param_names_param(gateway: FakeGateway, client: llmrpc.Client) -> None:
    meta = {"param": "logit_bias", "provider": "anthropic"}
    gateway.handler = aborting(
        rich_status(grpc.StatusCode.INVALID_ARGUMENT, "nope", "UNSUPPORTED_PARAMETER", meta)
    )
    with pytest.raises(llmrpc.UnsupportedParamsError) as caught:
        client.completion("anthropic/claude-x", MESSAGES, logit_bias={1: 2})
    assert caught.value.param == "logit_bias"
    assert caught.value.llm_provider == "anthropic"


CODES = [
    (grpc.StatusCode.DEADLINE_EXCEEDED, llmrpc.Timeout, 408),
    (grpc.StatusCode.UNAVAILABLE, llmrpc.APIConnectionError, 500),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, llmrpc.RateLimitError, 429),
    (grpc.StatusCode.UNAUTHENTICATED, llmrpc.AuthenticationError, 401),
    (grpc.StatusCode.PERMISSION_DENIED, llmrpc.PermissionDeniedError, 403),
    (grpc.StatusCode.INVALID_ARGUMENT, llmrpc.BadRequestError, 400),
    (grpc.StatusCode.NOT_FOUND, llmrpc.NotFoundError, 404),
    (grpc.StatusCode.CANCELLED, llmrpc.APIConnectionError, 500),
    (grpc.StatusCode.INTERNAL, llmrpc.InternalServerError, 500),
    (grpc.StatusCode.UNIMPLEMENTED, llmrpc.InternalServerError, 500),
    (grpc.StatusCode.FAILED_PRECONDITION, llmrpc.InternalServerError, 500),
]


@pytest.mark.parametrize(("code", "cls", "status"), CODES)
def test_without_error_info_code_picks_class(
    gateway: FakeGateway, client: llmrpc.Client, code: grpc.StatusCode, cls: type[Exception], status: int
) -> None:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, "plain status")

    gateway.handler = handler
    with pytest.raises(cls) as caught:
        client.completion("openai/gpt-4o", MESSAGES)
    err: Any = caught.value
    assert type(err) is cls
    assert err.status_code == status
    assert err.reason is None
    assert err.metadata == {}
    assert err.message == f"llmrpc.{cls.__name__}: plain status"


def test_garbled_or_mismatched_trailer_still_maps(gateway: FakeGateway, client: llmrpc.Client) -> None:
    garbled = rpc_status._Status(
        code=grpc.StatusCode.RESOURCE_EXHAUSTED,
        details="busy",
        trailing_metadata=(("grpc-status-details-bin", b"\xff\xff not a proto"),),
    )
    gateway.handler = aborting(garbled)
    with pytest.raises(llmrpc.RateLimitError):
        client.completion("openai/gpt-4o", MESSAGES)

    # A Status whose code disagrees with the wire code: the ErrorInfo still decides.
    inner = rich_status(grpc.StatusCode.INTERNAL, "quota", "QUOTA_EXCEEDED")
    mismatched = rpc_status._Status(
        code=grpc.StatusCode.UNAVAILABLE, details="quota", trailing_metadata=inner.trailing_metadata
    )
    gateway.handler = aborting(mismatched)
    with pytest.raises(llmrpc.RateLimitError) as caught:
        client.completion("openai/gpt-4o", MESSAGES)
    assert caught.value.grpc_code == grpc.StatusCode.UNAVAILABLE


async def test_async_errors_map_the_same(gateway: FakeGateway, client: llmrpc.Client) -> None:
    meta = {"provider": "openai", "attempts": "1"}
    status = rich_status(grpc.StatusCode.INVALID_ARGUMENT, "too long", "CONTEXT_WINDOW_EXCEEDED", meta)
    gateway.handler = aborting(status)
    with pytest.raises(llmrpc.ContextWindowExceededError) as caught:
        await client.acompletion("openai/gpt-4o", MESSAGES)
    assert caught.value.llm_provider == "openai"
    assert caught.value.num_retries == 0
    assert caught.value.reason == "CONTEXT_WINDOW_EXCEEDED"

    gateway.handler = aborting(
        rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "wait", "RATE_LIMITED", retry_delay=2)
    )
    with pytest.raises(llmrpc.RateLimitError) as rate:
        await client.acompletion("openai/gpt-4o", MESSAGES)
    assert rate.value.retry_after == 2.0


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_unreachable_gateway_is_connection_error() -> None:
    with llmrpc.Client(f"127.0.0.1:{_unused_port()}") as client:
        with pytest.raises(llmrpc.APIConnectionError) as caught:
            client.completion("openai/gpt-4o", MESSAGES)
        assert caught.value.grpc_code == grpc.StatusCode.UNAVAILABLE
        assert isinstance(caught.value, openai.APIConnectionError)


async def test_unreachable_gateway_async() -> None:
    async with llmrpc.Client(f"127.0.0.1:{_unused_port()}") as client:
        with pytest.raises(llmrpc.APIConnectionError):
            await client.acompletion("openai/gpt-4o", MESSAGES)


def test_get_supported_params_errors_map(gateway: FakeGateway, client: llmrpc.Client) -> None:
    meta = {"knownProviders": "openai,anthropic"}
    gateway.handler = aborting(
        rich_status(grpc.StatusCode.INVALID_ARGUMENT, "who?", "UNKNOWN_PROVIDER", meta)
    )
    with pytest.raises(llmrpc.BadRequestError) as caught:
        client.get_supported_openai_params("nope/model")
    assert caught.value.metadata["knownProviders"] == "openai,anthropic"
    assert str(caught.value.request.url).endswith("/GetSupportedParams")


def test_bad_value_fails_before_any_rpc(gateway: FakeGateway, client: llmrpc.Client) -> None:
    with pytest.raises(llmrpc.BadRequestError) as caught:
        client.completion("openai/gpt-4o", MESSAGES, temperature="hot")
    assert "'temperature'" in caught.value.message
    assert caught.value.param == "temperature"
    assert caught.value.field_violations[0][0] == "temperature"
    assert caught.value.grpc_code is None
    assert gateway.requests == []


def test_exceptions_construct_like_litellm() -> None:
    err = llmrpc.RateLimitError("slow down", model="gpt-4o", llm_provider="openai")
    assert (err.status_code, err.model, err.llm_provider) == (429, "gpt-4o", "openai")
    assert err.message == "llmrpc.RateLimitError: slow down"
    assert err.retry_after is None and err.field_violations == [] and err.metadata == {}
    assert isinstance(err, openai.RateLimitError)
    timeout = llmrpc.Timeout("too slow")
    assert timeout.status_code == 408 and isinstance(timeout, openai.APITimeoutError)
    assert llmrpc.APIError("odd", status_code=418).status_code == 418
    assert llmrpc.APIConnectionError("down").status_code == 500
    assert llmrpc.ServiceUnavailableError("later").status_code == 503
    assert llmrpc.BadGatewayError("proxy").status_code == 502
    assert llmrpc.APIResponseValidationError("garbage").status_code == 500
    assert llmrpc.BadRequestError("big", status_code=413).response.status_code == 413
    with pytest.raises(openai.APIStatusError):
        raise llmrpc.ContentPolicyViolationError("no")


def test_map_rpc_error_is_thread_safe_pure(gateway: FakeGateway, client: llmrpc.Client) -> None:
    # map_rpc_error is called from many threads by a shared client; it keeps no state.
    gateway.handler = aborting(rich_status(grpc.StatusCode.NOT_FOUND, "gone", "MODEL_NOT_FOUND"))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.completion("openai/gpt-x", MESSAGES)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 8 and all(type(e) is llmrpc.NotFoundError for e in errors)
    assert exceptions.map_rpc_error is llmrpc.exceptions.map_rpc_error


def test_foreign_error_info_does_not_pick_class(gateway: FakeGateway, client: llmrpc.Client) -> None:
    info = error_details_pb2.ErrorInfo(reason="RATE_LIMITED", domain="envoy.example", metadata={"k": "v"})
    status = status_pb2.Status(
        code=grpc.StatusCode.NOT_FOUND.value[0], message="no route", details=[_pack(info)]
    )
    gateway.handler = aborting(rpc_status.to_status(status))
    with pytest.raises(llmrpc.NotFoundError) as caught:
        client.completion("openai/gpt-4o", MESSAGES)
    assert caught.value.reason == "RATE_LIMITED" and caught.value.metadata == {"k": "v"}


def test_caller_supplied_response_is_kept() -> None:
    http = exceptions._http
    response = http.Response(429, request=http.Request("POST", "https://api.example/v1/chat"))
    err = llmrpc.RateLimitError("x", model="m", llm_provider="p", response=response)
    assert err.response is response and err.status_code == 429
    assert str(err.request.url) == "https://api.example/v1/chat"


@pytest.mark.parametrize(("status", "retry"), [(400, False), (401, False), (404, False), (408, True), (409, True),
                                               (422, False), (429, True), (500, True), (503, True), (529, True)])
def test_should_retry_is_litellms(status: int, retry: bool) -> None:
    assert llmrpc._should_retry(status) is retry


@pytest.mark.parametrize(("mock", "retry"), [("litellm.RateLimitError", True), ("litellm.InternalServerError", True),
                                             ("litellm.BadRequestError", False)])
def test_should_retry_on_a_raised_error(mock_gateway: GatewayThread, mock: str, retry: bool) -> None:
    with llmrpc.Client(mock_gateway.address) as client, pytest.raises(openai.OpenAIError) as info:
        client.completion("mock/echo", [{"role": "user", "content": "hi"}], mock_response=mock, num_retries=0)
    assert llmrpc._should_retry(info.value.status_code) is retry
