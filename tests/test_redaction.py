"""Redaction: response metadata and spans name only the upstream origin (``scheme://host:port``), and
no credential the gateway sent - the caller's key or the server's own - reaches a caller's error, a
span (attributes, status, exception events and their stack traces), or the log callback, even when
the upstream echoes it back in an error body. Through the real gateway with in-memory OpenTelemetry
providers and a fake upstream that echoes the credentials it received."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator

import grpc
import llmrpc
import pytest
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc
from llmrpc_server.providers.base import ErrorKind, HttpCall, ProviderError
from llmrpc_server.redaction import origin, redact, scrub_error
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from tests.otel_support import Otel, TelemetryGateway, of_kind, otel, start_observed
from tests.upstreams import FakeUpstream, RecordedRequest, Reply, SSEReply, anthropic, openai

__all__ = ["otel", "start_observed"]  # fixtures

SERVER_KEY = "sk-server-0f1e2d3c4b5a69788796a5b4"
CALLER_KEY = "caller-key-77aa88bb99cc"  # no generic shape: only the exact-value redaction catches it
PASSWORD = "base-password-4242"
SIGNATURE = "signed-query-value-9999"
PATH_SECRET = "tenant-secret-path-31337"
USER = [{"role": "user", "content": "hi"}]


def echo_credentials(req: RecordedRequest) -> Reply:
    """A 401 that quotes back every credential header it got, as some upstreams do."""
    sent = {k: v for k, v in req.headers.items() if k in ("authorization", "x-api-key")}
    return openai.error(401, f"Incorrect API key provided: {sent}", type="invalid_request_error",
                        code="invalid_api_key")


@pytest.fixture
def echo() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=echo_credentials) as up:
        yield up


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("llmrpc_server.calls")
    capture = Capture()
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(capture)


def span_text(spans: list[ReadableSpan]) -> str:
    """Everything a span exporter would ship: names, attributes, status and events."""
    parts = []
    for span in spans:
        parts += [span.name, repr(dict(span.attributes or {})), repr(span.status.description)]
        parts += [repr((e.name, dict(e.attributes or {}))) for e in span.events]
    return "\n".join(parts)


def observed(start_observed: Callable[..., TelemetryGateway], **env: str) -> TelemetryGateway:
    return start_observed(env=env, failure_callback=("log",), success_callback=("log",))


def wait_for(lines: list[str], count: int) -> None:
    deadline = time.monotonic() + 5
    while len(lines) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_callers_key_echoed_by_the_upstream_is_redacted_everywhere(
    otel: Otel, start_observed: Callable[..., TelemetryGateway], echo: FakeUpstream, log_lines: list[str]
) -> None:
    gw = observed(start_observed)
    with llmrpc.Client(gw.address) as client, pytest.raises(llmrpc.AuthenticationError) as info:
        client.completion("openai/gpt-4o", USER, api_base=echo.url, api_key=CALLER_KEY)
    assert CALLER_KEY in echo.requests[-1].headers["authorization"]  # it was sent, and echoed
    assert CALLER_KEY not in str(info.value) and "[redacted]" in str(info.value)
    spans = otel.wait_spans()
    text = span_text(spans)
    assert "exception" in text and "PROVIDER_AUTH_FAILED" in text  # the exception event is there...
    assert CALLER_KEY not in text  # ...without the key, stack trace included
    wait_for(log_lines, 1)
    assert log_lines and all(CALLER_KEY not in line for line in log_lines)


@pytest.mark.parametrize("stream", [False, True])
def test_the_server_key_echoed_by_its_upstream_never_reaches_anyone(
    otel: Otel, start_observed: Callable[..., TelemetryGateway], echo: FakeUpstream, log_lines: list[str],
    stream: bool,
) -> None:
    gw = observed(start_observed, OPENAI_API_KEY=SERVER_KEY, OPENAI_API_BASE=echo.url)
    with llmrpc.Client(gw.address) as client, pytest.raises(llmrpc.AuthenticationError) as info:
        out = client.completion("openai/gpt-4o", USER, stream=stream)
        list(out) if stream else None  # type: ignore[call-overload]
    assert SERVER_KEY in echo.requests[-1].headers["authorization"]
    assert info.value.grpc_code == grpc.StatusCode.FAILED_PRECONDITION
    assert SERVER_KEY not in str(info.value) and SERVER_KEY not in repr(info.value.metadata)
    assert SERVER_KEY not in span_text(otel.wait_spans())
    wait_for(log_lines, 1)
    assert log_lines and all(SERVER_KEY not in line for line in log_lines)


def test_an_anthropic_key_echoed_mid_stream_is_redacted(
    start_observed: Callable[..., TelemetryGateway], otel: Otel
) -> None:
    def echo_in_stream(req: RecordedRequest) -> Reply:
        event = {"type": "error", "error": {"type": "authentication_error",
                                             "message": f"invalid x-api-key {req.headers['x-api-key']}"}}
        return SSEReply([anthropic.event("error", event)])

    with FakeUpstream(default=echo_in_stream) as up:
        gw = start_observed(env={"ANTHROPIC_API_KEY": SERVER_KEY, "ANTHROPIC_API_BASE": up.url})
        with llmrpc.Client(gw.address) as client, pytest.raises(llmrpc.AuthenticationError) as info:
            list(client.completion("anthropic/claude-sonnet-4-5", USER, stream=True))
    assert SERVER_KEY not in str(info.value)
    assert SERVER_KEY not in span_text(otel.wait_spans())


def test_metadata_and_spans_name_only_the_origin(
    otel: Otel, start_observed: Callable[..., TelemetryGateway], log_lines: list[str]
) -> None:
    with FakeUpstream(default=openai.default_handler) as up:
        host = up.url.split("//", 1)[1].rstrip("/")
        base = f"http://user:{PASSWORD}@{host}/{PATH_SECRET}/v1?sig={SIGNATURE}"
        gw = observed(start_observed, OPENAI_API_KEY=SERVER_KEY, OPENAI_API_BASE=base)
        with llmrpc.Client(gw.address) as client:
            resp = client.completion("openai/gpt-4o", USER)
            chunks = list(client.completion("openai/gpt-4o", USER, stream=True))
        sent = up.requests[-1]
        assert sent.path == f"/{PATH_SECRET}/v1/chat/completions" and sent.query == {"sig": SIGNATURE}
    assert resp._hidden_params["api_base"] == f"http://{host}"
    assert chunks[0]._hidden_params["api_base"] == f"http://{host}"
    spans = otel.wait_spans(servers=2)
    (client_span, *_) = of_kind(spans, SpanKind.CLIENT)
    attributes = dict(client_span.attributes or {})
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == int(host.rsplit(":", 1)[1])
    wait_for(log_lines, 2)
    records = [json.loads(line) for line in log_lines]
    assert {r.get("api_base") for r in records} == {f"http://{host}"}
    everything = span_text(spans) + "\n".join(log_lines)
    for secret in (PASSWORD, SIGNATURE, PATH_SECRET, SERVER_KEY):
        assert secret not in everything


def test_a_transport_error_naming_the_url_keeps_only_its_origin(start_gateway: Callable[..., object]) -> None:
    """A connection failure names where it could not connect, never the configured base's secrets."""
    gw = start_gateway(env={"OPENAI_API_KEY": SERVER_KEY,
                            "OPENAI_API_BASE": f"http://user:{PASSWORD}@127.0.0.1:9/{PATH_SECRET}?sig={SIGNATURE}"})
    with grpc.insecure_channel(gw.address) as channel:  # type: ignore[attr-defined]
        req = pb.CompleteRequest(model="openai/gpt-4o", num_retries=0)
        req.messages.add(role="user", content="hi")
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.CompletionServiceStub(channel).Complete(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    for secret in (PASSWORD, SIGNATURE, PATH_SECRET):
        assert secret not in (info.value.details() or "")


def test_a_signed_media_url_in_an_error_is_redacted_for_spans_and_the_caller(
    otel: Otel, start_observed: Callable[..., TelemetryGateway]
) -> None:
    """The gateway refuses to download a private-address image for ollama; the error names the URL,
    whose signature must not reach the trace (the server span records the exception chain)."""
    gw = start_observed(env={"OLLAMA_API_BASE": "http://127.0.0.1:9"})
    url = f"http://127.0.0.1:9/cat.png?X-Amz-Credential=cred-1234&X-Amz-Signature={SIGNATURE}"
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    with llmrpc.Client(gw.address) as client, pytest.raises(llmrpc.BadRequestError) as info:
        client.completion("ollama_chat/llava", [{"role": "user", "content": content}])
    assert SIGNATURE not in str(info.value) and "X-Amz-Signature=[redacted]" in str(info.value)
    text = span_text(otel.wait_spans())
    assert "exception" in text and SIGNATURE not in text and "cred-1234" not in text


# ---- the helpers ------------------------------------------------------------------------------------


def test_origin() -> None:
    assert origin("https://u:p@Host.Example:8443/a/b?x=1#f") == "https://host.example:8443"
    assert origin("http://[::1]:9/v1") == "http://[::1]:9"
    assert origin("https://api.openai.com/v1") == "https://api.openai.com"
    assert origin("not a url") == ""


def test_generic_shapes_are_redacted() -> None:
    text = ("key sk-proj-abcdef123456, auth Bearer eyJhbGciOi.payload.sig, google AIzaSyA1234567890abcdefghijklmnop,"
            " url https://user:pw@host/x?key=abc123&alt=sse, masked sk-abc***xyz1")
    out = redact(text)
    for secret in ("sk-proj-abcdef123456", "eyJhbGciOi", "AIzaSyA1234567890", "user:pw", "key=abc123", "sk-abc***"):
        assert secret not in out, secret
    assert "Bearer [redacted]" in out and "alt=sse" in out
    assert redact("Bearer token missing") == "Bearer token missing"  # not token-shaped: kept


def test_scrub_error_uses_everything_the_call_carried() -> None:
    call = HttpCall(url=f"https://u:{PASSWORD}@h.example/{PATH_SECRET}/chat?api-version=2024-10-21&sig={SIGNATURE}",
                    headers={"api-key": "azkey-1234", "x-goog-api-key": "gkey-5678",
                             "content-type": "application/json"},
                    body={})
    err = ProviderError(ErrorKind.AUTH, f"bad api-key azkey-1234 / gkey-5678 for {call.url}", param="gkey-5678")
    scrub_error(err, call)
    for secret in ("azkey-1234", "gkey-5678", PASSWORD, PATH_SECRET, SIGNATURE):
        assert secret not in err.message and secret not in str(err), secret
    assert "https://h.example" in err.message and err.param == "[redacted]"
