"""The thin client's local callbacks (``llmrpc.success_callback`` / ``failure_callback``) and its W3C
trace-context propagation to the gateway."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import llmrpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from tests.otel_support import Otel, TelemetryGateway, of_kind, otel, start_observed
from tests.support import GatewayThread

__all__ = ["otel", "start_observed"]  # fixtures

SECRET = "sk-client-SECRET-5678"
MESSAGES = [{"role": "user", "content": "Hi"}]
Event = tuple[dict[str, Any], Any, datetime, datetime]


@pytest.fixture
def events() -> Iterator[list[Event]]:
    """Registers a recording success and failure callback; restores the lists afterwards."""
    seen: list[Event] = []
    lock = threading.Lock()

    def record(kwargs: dict[str, Any], response: Any, start: datetime, end: datetime) -> None:
        with lock:
            seen.append((kwargs, response, start, end))

    saved = llmrpc.success_callback, llmrpc.failure_callback
    llmrpc.success_callback = [record]
    llmrpc.failure_callback = [record]
    yield seen
    llmrpc.success_callback, llmrpc.failure_callback = saved


@pytest.fixture
def client(mock_gateway: GatewayThread) -> Iterator[llmrpc.Client]:
    with llmrpc.Client(mock_gateway.address) as c:
        yield c


def wait_for(seen: list[Any], n: int, timeout: float = 5.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while len(seen) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(seen) >= n
    return seen


def test_success_callback_gets_litellm_arguments(events: list[Event], client: llmrpc.Client) -> None:
    response = llmrpc.completion(model="openai/gpt-4o-mini", messages=MESSAGES, mock_response="hello",
                                 api_key=SECRET, user="u1", client=client)
    ((kwargs, got, start, end),) = wait_for(events, 1)
    assert got is response and start <= end
    assert kwargs["model"] == "openai/gpt-4o-mini" and kwargs["messages"] == MESSAGES and kwargs["user"] == "u1"
    assert kwargs["response_cost"] == response._hidden_params["response_cost"] > 0
    assert "api_key" not in kwargs and SECRET not in repr(kwargs)


def test_failure_callback_gets_the_exception(events: list[Event], client: llmrpc.Client) -> None:
    with pytest.raises(llmrpc.RateLimitError):
        llmrpc.completion(model="openai/gpt-4o-mini", messages=MESSAGES, mock_response="litellm.RateLimitError",
                          num_retries=0, client=client)
    ((kwargs, response, _, _),) = wait_for(events, 1)
    assert response is None and isinstance(kwargs["exception"], llmrpc.RateLimitError)


def test_stream_reports_once_exhausted_with_the_rebuilt_response(
        events: list[Event], client: llmrpc.Client) -> None:
    stream = llmrpc.completion(model="openai/gpt-4o-mini", messages=MESSAGES, mock_response="a b c",
                               stream=True, stream_options={"include_usage": True}, client=client)
    assert isinstance(stream, llmrpc.CustomStreamWrapper)
    time.sleep(0.1)
    assert events == []  # not before the stream ends
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    ((kwargs, response, _, _),) = wait_for(events, 1)
    assert text == "a b c" and response.choices[0].message.content == "a b c"
    assert kwargs["complete_streaming_response"] is response and kwargs["response_cost"] > 0


def test_async_callbacks_and_streams(mock_gateway: GatewayThread) -> None:
    seen: list[dict[str, Any]] = []

    async def record(kwargs: dict[str, Any], response: Any, start: datetime, end: datetime) -> None:
        seen.append(kwargs)

    async def main() -> None:
        async with llmrpc.Client(mock_gateway.address) as client:
            await llmrpc.acompletion(model="mock/echo", messages=MESSAGES, client=client)
            stream = await llmrpc.acompletion(model="mock/echo", messages=MESSAGES, stream=True, client=client)
            assert isinstance(stream, llmrpc.AsyncCustomStreamWrapper)
            async for _ in stream:
                pass
            await asyncio.sleep(0.05)

    saved = llmrpc.success_callback
    llmrpc.success_callback = [record]
    try:
        asyncio.run(main())
    finally:
        llmrpc.success_callback = saved
    assert [kwargs["call_type"] for kwargs in seen] == ["acompletion", "acompletion"]
    assert [kwargs.get("stream") for kwargs in seen] == [None, True]


def test_raising_or_slow_callbacks_do_not_affect_the_call(client: llmrpc.Client) -> None:
    def boom(*args: Any) -> None:
        raise RuntimeError("callback bug")

    def slow(*args: Any) -> None:
        time.sleep(1.0)

    saved = llmrpc.success_callback
    llmrpc.success_callback = [boom, slow]
    try:
        began = time.monotonic()
        for _ in range(3):
            response = llmrpc.completion(model="mock/echo", messages=MESSAGES, client=client)
            assert response.choices[0].message.content
        assert time.monotonic() - began < 0.9
    finally:
        llmrpc.success_callback = saved


def test_trace_context_reaches_the_gateway(otel: Otel, start_observed: Callable[..., TelemetryGateway]) -> None:
    gw = start_observed()
    tracer = TracerProvider().get_tracer("caller")  # the caller's own SDK, not the global one
    with llmrpc.Client(gw.address) as client, tracer.start_as_current_span("caller-operation") as parent:
        llmrpc.completion(model="mock/echo", messages=MESSAGES, client=client)
    (server,) = of_kind(otel.wait_spans(), SpanKind.SERVER)
    assert server.context.trace_id == parent.get_span_context().trace_id
    assert server.parent is not None and server.parent.span_id == parent.get_span_context().span_id


def test_no_trace_metadata_without_an_active_span() -> None:
    from llmrpc._callbacks import with_trace

    assert with_trace((("authorization", "Bearer x"),)) == (("authorization", "Bearer x"),)


class Recorder(llmrpc.CustomLogger):
    """A LiteLLM-style CustomLogger recording which hook ran with what."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.threads: set[str] = set()

    def _note(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        self.threads.add(threading.current_thread().name)

    def log_pre_api_call(self, model: str, messages: Any, kwargs: dict[str, Any]) -> None:
        self._note("log_pre_api_call", model, messages, kwargs)

    def log_post_api_call(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                          end_time: datetime | None) -> None:
        self._note("log_post_api_call", kwargs, response_obj)

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                          end_time: datetime) -> None:
        self._note("log_success_event", kwargs, response_obj, start_time, end_time)

    def log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                          end_time: datetime) -> None:
        self._note("log_failure_event", kwargs, response_obj, start_time, end_time)

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                                      end_time: datetime) -> None:
        self._note("async_log_success_event", kwargs, response_obj)

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                                      end_time: datetime) -> None:
        self._note("async_log_failure_event", kwargs, response_obj)


@pytest.fixture
def lists() -> Iterator[None]:
    saved = llmrpc.input_callback, llmrpc.success_callback, llmrpc.failure_callback, llmrpc.callbacks
    yield
    llmrpc.input_callback, llmrpc.success_callback, llmrpc.failure_callback, llmrpc.callbacks = saved


def test_custom_logger_in_callbacks_gets_litellm_hooks(lists: None, client: llmrpc.Client) -> None:
    from llmrpc.integrations.custom_logger import CustomLogger

    assert CustomLogger is llmrpc.CustomLogger
    recorder = Recorder()
    llmrpc.callbacks = [recorder]
    response = llmrpc.completion(model="mock/echo", messages=MESSAGES, api_key=SECRET, client=client)
    names = [name for name, _ in wait_for(recorder.calls, 3)]
    assert names == ["log_pre_api_call", "log_post_api_call", "log_success_event"]
    model, messages, kwargs = recorder.calls[0][1]
    assert (model, messages, kwargs["log_event_type"]) == ("mock/echo", MESSAGES, "pre_api_call")
    got_kwargs, got, start, end = recorder.calls[2][1]
    assert got is response and start <= end and got_kwargs["litellm_call_id"] == kwargs["litellm_call_id"]
    assert SECRET not in repr(recorder.calls) and recorder.threads == {"llmrpc-callbacks_0"}
    with pytest.raises(llmrpc.RateLimitError):
        llmrpc.completion(model="mock/echo", messages=MESSAGES, mock_response="litellm.RateLimitError",
                          client=client)
    failure = wait_for(recorder.calls, 6)[5]
    assert failure[0] == "log_failure_event" and isinstance(failure[1][0]["exception"], llmrpc.RateLimitError)
    assert "RateLimitError" in failure[1][0]["traceback_exception"] and failure[1][1] is None


def test_acompletion_calls_the_async_hooks(lists: None, mock_gateway: GatewayThread) -> None:
    recorder = Recorder()
    llmrpc.success_callback = [recorder]
    llmrpc.failure_callback = [recorder]

    async def main() -> None:
        async with llmrpc.Client(mock_gateway.address) as client:
            await llmrpc.acompletion(model="mock/echo", messages=MESSAGES, client=client)
            with pytest.raises(llmrpc.RateLimitError):
                await llmrpc.acompletion(model="mock/echo", messages=MESSAGES, client=client,
                                         mock_response="litellm.RateLimitError")
            await asyncio.sleep(0.05)

    asyncio.run(main())
    assert [name for name, _ in recorder.calls] == ["async_log_success_event", "async_log_failure_event"]


def test_input_callback_functions_get_the_call_kwargs(lists: None, client: llmrpc.Client) -> None:
    seen: list[dict[str, Any]] = []
    llmrpc.input_callback = [seen.append]
    llmrpc.completion(model="mock/echo", messages=MESSAGES, user="u9", client=client)
    (kwargs,) = wait_for(seen, 1)
    assert kwargs["model"] == "mock/echo" and kwargs["messages"] == MESSAGES and kwargs["user"] == "u9"
    assert kwargs["log_event_type"] == "pre_api_call"


def test_per_call_callback_lists_run_and_are_not_sent(lists: None, client: llmrpc.Client) -> None:
    seen: list[tuple[str, Any]] = []
    recorder = Recorder()
    response = llmrpc.completion(model="mock/echo", messages=MESSAGES, client=client,
                                 success_callback=[lambda kwargs, resp, *_: seen.append(("success", resp))],
                                 input_callback=[lambda kwargs: seen.append(("input", kwargs["model"]))],
                                 logger_fn=lambda details: seen.append(("logger_fn", details["model"])),
                                 callbacks=[recorder])
    assert sorted(wait_for(seen, 3), key=str) == sorted(
        [("input", "mock/echo"), ("logger_fn", "mock/echo"), ("success", response)], key=str)
    assert [name for name, _ in wait_for(recorder.calls, 3)][-1] == "log_success_event"
    # Used by the client, never forwarded (a function in extra_body could not even be encoded).
    assert "success_callback" not in recorder.calls[-1][1][0]
