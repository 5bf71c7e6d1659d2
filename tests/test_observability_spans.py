"""Spans and metrics (GenAI semantic conventions): an in-memory exporter checks the span tree and its
attributes for a unary call, a stream, a cache hit, a retry followed by a fallback, and an error."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc
from llmrpc_server.interceptors import build_interceptors
from llmrpc_server.observability.otel import configure
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from tests.otel_support import Otel, TelemetryGateway, of_kind, otel, start_observed
from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream, openai

__all__ = ["otel", "start_observed"]  # fixtures

SECRET = "sk-test-SECRET-9f8e7d"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def request(**fields: Any) -> pb.CompleteRequest:
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}], **fields}
    return json_format.ParseDict(body, pb.CompleteRequest())


@pytest.fixture
def stub_for() -> Iterator[Callable[[TelemetryGateway], pb_grpc.CompletionServiceStub]]:
    channels: list[grpc.Channel] = []

    def make(gw: TelemetryGateway) -> pb_grpc.CompletionServiceStub:
        channels.append(grpc.insecure_channel(gw.address))
        return pb_grpc.CompletionServiceStub(channels[-1])

    yield make
    for channel in channels:
        channel.close()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def no_secret(spans: list[ReadableSpan]) -> None:
    for span in spans:
        text = repr(attrs(span)) + repr([dict(e.attributes or {}) for e in span.events]) + span.name
        assert SECRET not in text


def test_unary_call_server_span_with_one_attempt_child(
        otel: Otel, start_observed: Callable[..., TelemetryGateway],
        stub_for: Callable[[TelemetryGateway], pb_grpc.CompletionServiceStub]) -> None:
    gw = start_observed()
    metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
    resp = stub_for(gw).Complete(request(mock_response="Hi!", temperature=0.3, max_tokens=64, user="user-7",
                                         api_key=SECRET), metadata=metadata, timeout=10)
    spans = otel.wait_spans()
    (server,) = of_kind(spans, SpanKind.SERVER)
    (client,) = of_kind(spans, SpanKind.CLIENT)
    assert server.name == "/llmrpc.v1.CompletionService/Complete"
    assert f"{server.context.trace_id:032x}" == TRACE_ID  # the caller's trace continues
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert client.name == "chat gpt-4o-mini"
    a = attrs(server)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "openai/gpt-4o-mini"
    assert a["gen_ai.provider.name"] == "mock"
    assert a["gen_ai.request.temperature"] == 0.3 and a["gen_ai.request.max_tokens"] == 64
    assert a["gen_ai.response.id"] == resp.id and a["gen_ai.response.model"] == resp.model
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.usage.input_tokens"] == resp.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == resp.usage.completion_tokens
    assert a["user.id"] == "user-7" and a["llmrpc.cache_hit"] is False and a["llmrpc.attempts"] == 1
    assert a["llmrpc.cost_usd"] == pytest.approx(resp.metadata.cost_usd)
    assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a  # content is opt-in
    c = attrs(client)
    assert c["gen_ai.provider.name"] == "mock" and c["gen_ai.request.model"] == "gpt-4o-mini"
    assert c["gen_ai.response.finish_reasons"] == ("stop",) and c["gen_ai.usage.output_tokens"] > 0
    no_secret(spans)
    points = otel.metrics()
    assert any(p.count >= 1 for _, p in points["gen_ai.client.operation.duration"])
    assert {a["gen_ai.token.type"] for a, _ in points["gen_ai.client.token.usage"]} == {"input", "output"}


def test_stream_records_usage_finish_reasons_and_time_to_first_chunk(
        otel: Otel, start_observed: Callable[..., TelemetryGateway],
        stub_for: Callable[[TelemetryGateway], pb_grpc.CompletionServiceStub]) -> None:
    gw = start_observed()
    req = pb.StreamCompleteRequest(request=request(mock_response="one two three"))
    req.stream_options.include_usage = True
    chunks = list(stub_for(gw).StreamComplete(req, timeout=10))
    assert chunks[-1].HasField("usage") and chunks[-1].metadata.HasField("cost_usd")
    spans = otel.wait_spans()
    (server,) = of_kind(spans, SpanKind.SERVER)
    (client,) = of_kind(spans, SpanKind.CLIENT)
    assert server.name == "/llmrpc.v1.CompletionService/StreamComplete"
    a, c = attrs(server), attrs(client)
    assert a["gen_ai.request.stream"] is True and c["gen_ai.request.stream"] is True
    assert a["gen_ai.response.time_to_first_chunk"] > 0
    for span_attrs in (a, c):
        assert span_attrs["gen_ai.response.finish_reasons"] == ("stop",)
        assert span_attrs["gen_ai.usage.output_tokens"] == chunks[-1].usage.completion_tokens
        assert span_attrs["gen_ai.response.id"] == chunks[0].id
    assert otel.metrics()["gen_ai.client.operation.time_to_first_chunk"]


def test_cache_hit_has_no_attempt_span(
        otel: Otel, start_observed: Callable[..., TelemetryGateway],
        stub_for: Callable[[TelemetryGateway], pb_grpc.CompletionServiceStub]) -> None:
    stub = stub_for(start_observed())
    first = stub.Complete(request(mock_response="cached?", caching=True), timeout=10)
    second = stub.Complete(request(mock_response="cached?", caching=True), timeout=10)
    assert second.metadata.cache_hit and not first.metadata.cache_hit
    assert second.metadata.HasField("cost_usd") and second.metadata.cost_usd == 0.0
    spans = otel.wait_spans(servers=2)
    miss, hit = sorted(of_kind(spans, SpanKind.SERVER), key=lambda s: s.start_time or 0)
    assert attrs(hit)["llmrpc.cache_hit"] is True and attrs(miss)["llmrpc.cache_hit"] is False
    children = [s for s in of_kind(spans, SpanKind.CLIENT) if s.parent]
    assert [s.parent.span_id for s in children if s.parent] == [miss.context.span_id]
    events = {a["llmrpc.cache.event"]: p.value for a, p in otel.metrics()["llmrpc.cache.events"]}
    assert events["hits"] >= 1 and events["misses"] >= 1


def test_retry_then_fallback_are_separate_attempt_spans(
        otel: Otel, start_observed: Callable[..., TelemetryGateway],
        stub_for: Callable[[TelemetryGateway], pb_grpc.CompletionServiceStub]) -> None:
    with FakeUpstream(openai.default_handler) as upstream:
        upstream.enqueue(openai.rate_limited(retry_after=0), openai.rate_limited(retry_after=0))
        gw = start_observed(env={"OPENAI_API_KEY": SECRET, "OPENAI_API_BASE": upstream.url}, num_retries=1)
        resp = stub_for(gw).Complete(request(fallbacks=["openai/gpt-4o"]), timeout=10)
        assert [a.outcome for a in resp.metadata.attempt_log] == ["RATE_LIMITED", "RATE_LIMITED", "ok"]
    spans = otel.wait_spans()
    (server,) = of_kind(spans, SpanKind.SERVER)
    attempts = sorted(of_kind(spans, SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    assert [s.name for s in attempts] == ["chat gpt-4o-mini", "chat gpt-4o-mini", "chat gpt-4o"]
    assert all(s.parent is not None and s.parent.span_id == server.context.span_id for s in attempts)
    assert [attrs(s).get("error.type") for s in attempts] == ["RATE_LIMITED", "RATE_LIMITED", None]
    assert [s.status.status_code for s in attempts[:2]] == [StatusCode.ERROR] * 2
    assert attrs(attempts[0])["http.response.status_code"] == 429
    assert attrs(server)["llmrpc.attempts"] == 3 and attrs(server)["gen_ai.provider.name"] == "openai"
    assert "error.type" not in attrs(server)
    points = otel.metrics()
    assert sum(p.value for _, p in points["llmrpc.upstream.retries"]) >= 1
    assert sum(p.value for _, p in points["llmrpc.upstream.fallbacks"]) >= 1
    assert {a["error.type"] for a, _ in points["llmrpc.upstream.errors"]} >= {"RATE_LIMITED"}
    resilience = {(a["llmrpc.event"], a["error.type"]) for a, _ in points["llmrpc.resilience.events"]}
    assert {("retries", "RATE_LIMITED"), ("fallbacks", "RATE_LIMITED")} <= resilience
    no_secret(spans)


def test_error_marks_server_and_attempt_spans(
        otel: Otel, start_observed: Callable[..., TelemetryGateway],
        stub_for: Callable[[TelemetryGateway], pb_grpc.CompletionServiceStub]) -> None:
    gw = start_observed()
    with pytest.raises(grpc.RpcError) as info:
        stub_for(gw).Complete(request(mock_response="litellm.BadRequestError", api_key=SECRET), timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    spans = otel.wait_spans()
    (server,) = of_kind(spans, SpanKind.SERVER)
    (client,) = of_kind(spans, SpanKind.CLIENT)
    assert attrs(server)["error.type"] == "PROVIDER_BAD_REQUEST"
    assert attrs(server)["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert server.status.status_code is StatusCode.ERROR
    assert attrs(client)["error.type"] == "PROVIDER_BAD_REQUEST" and client.status.status_code is StatusCode.ERROR
    durations = otel.metrics()["gen_ai.client.operation.duration"]
    assert any(a.get("error.type") == "PROVIDER_BAD_REQUEST" for a, _ in durations)
    no_secret(spans)


def test_content_is_recorded_only_when_turned_on(
        otel: Otel, start_observed: Callable[..., TelemetryGateway],
        stub_for: Callable[[TelemetryGateway], pb_grpc.CompletionServiceStub]) -> None:
    gw = start_observed(otel_record_content=True)
    stub_for(gw).Complete(request(mock_response="General Kenobi", api_key=SECRET), timeout=10)
    (server,) = of_kind(otel.wait_spans(), SpanKind.SERVER)
    a = attrs(server)
    assert '"content":"Hello there"' in a["gen_ai.input.messages"]
    assert '"content":"General Kenobi"' in a["gen_ai.output.messages"]
    no_secret([server])


def test_health_checks_are_not_traced(otel: Otel, start_observed: Callable[..., TelemetryGateway]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    gw = start_observed()
    with grpc.insecure_channel(gw.address) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert otel.wait_spans(timeout=0.3) == []


def test_rejected_request_is_an_error_span(
        otel: Otel, start_observed: Callable[..., TelemetryGateway],
        stub_for: Callable[[TelemetryGateway], pb_grpc.CompletionServiceStub]) -> None:
    with pytest.raises(grpc.RpcError):
        stub_for(start_observed()).Complete(request(temperature=9.0), timeout=10)
    (server,) = of_kind(otel.wait_spans(), SpanKind.SERVER)
    assert server.status.status_code is StatusCode.ERROR
    assert attrs(server)["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


# ---- SDK setup from OTEL_* ----------------------------------------------------------------------
def test_default_configuration_installs_nothing() -> None:
    settings = gateway_settings()
    telemetry = configure(settings)
    assert telemetry.tracer_provider is None and telemetry.meter_provider is None
    assert build_interceptors(settings, telemetry.tracer_provider) == []


def test_exporters_from_the_environment() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    env = {"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_METRICS_EXPORTER": "console",
           "OTEL_SERVICE_NAME": "gw-test", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci"}
    telemetry = configure(gateway_settings(env))
    try:
        assert isinstance(telemetry.tracer_provider, TracerProvider)
        assert telemetry.tracer_provider.resource.attributes["service.name"] == "gw-test"
        assert telemetry.tracer_provider.resource.attributes["deployment.environment"] == "ci"
        assert telemetry.meter_provider is not None
    finally:
        telemetry.shutdown()
    otel_default = configure(gateway_settings(success_callback=("otel",)))
    assert otel_default.tracer_provider is not None  # the `otel` callback means OTLP by default
    otel_default.shutdown()
    with pytest.raises(ValueError, match="unknown exporter"):
        configure(gateway_settings({"OTEL_TRACES_EXPORTER": "zipkin-v0"}))


def test_console_exporter_prints_spans(start_gateway: Callable[..., GatewayThread],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    gw = start_gateway(env={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "llmrpc-console"})
    with grpc.insecure_channel(gw.address) as channel:
        pb_grpc.CompletionServiceStub(channel).Complete(request(mock_response="hi"), timeout=10)
    out = ""
    deadline = time.monotonic() + 5
    while "CompletionService/Complete" not in out and time.monotonic() < deadline:
        time.sleep(0.02)
        out += capsys.readouterr().out
    assert '"name": "chat gpt-4o-mini"' in out and '"service.name": "llmrpc-console"' in out


def test_prometheus_metrics_port(start_gateway: Callable[..., GatewayThread]) -> None:
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gw = start_gateway(metrics_port=port)
    with grpc.insecure_channel(gw.address) as channel:
        pb_grpc.CompletionServiceStub(channel).Complete(request(mock_response="hi"), timeout=10)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    assert "gen_ai_client_operation_duration_seconds_bucket" in text
    assert "gen_ai_client_token_usage" in text and 'gen_ai_token_type="output"' in text


def test_prometheus_with_workers_serves_every_workers_metrics(tmp_path: Any) -> None:
    """``--workers 2 --metrics-port M``: worker i serves M + i, and together they count every call."""
    import os
    import re
    import select
    import socket
    import subprocess
    import sys
    import urllib.request

    from tests.support import free_port, wait_serving

    def two_free_ports() -> int:
        while True:
            port = free_port()
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port + 1)) != 0:
                    return port

    port, metrics = free_port(), two_free_ports()
    env = {**{k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
           "LLMRPC_CACHE_PATH": str(tmp_path / "cache.sqlite")}
    proc = subprocess.Popen([sys.executable, "-m", "llmrpc_server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "2", "--metrics-port", str(metrics)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        listening, deadline = 0, time.monotonic() + 90
        while listening < 2:  # both workers, not just the first to bind: calls must be able to reach each
            assert time.monotonic() < deadline, "the workers did not both start"
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if ready:
                listening += "listening on" in proc.stderr.readline()
        wait_serving(f"127.0.0.1:{port}")
        calls = 30
        for _ in range(calls):  # a connection per call, so SO_REUSEPORT spreads them over both workers
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                pb_grpc.CompletionServiceStub(ch).Complete(request(model="mock/echo"), timeout=10)
        counts = []
        for worker_port in (metrics, metrics + 1):
            with urllib.request.urlopen(f"http://127.0.0.1:{worker_port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
            found = re.findall(r"^gen_ai_client_operation_duration_seconds_count\{[^}]*\} (\S+)$", text, re.M)
            counts.append(sum(float(v) for v in found))
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # also closes the stderr pipe
    assert sum(counts) == calls
    assert all(counts), f"each worker should have served some calls: {counts}"
