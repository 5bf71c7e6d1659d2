"""The offline ``mock/`` provider and LiteLLM's ``mock_response``.

The mock is an in-process OpenAI-compatible upstream: the adapter is the real OpenAI codec, and its
:class:`MockTransport` (mounted by the executor for ``mock://`` URLs, as httpx mounts a
``MockTransport``) answers the :class:`HttpCall` with :func:`answer` instead of the network, so
retries, error mapping, streaming and caching all run exactly as they do for a real provider. What
is special about the mock is data on the adapter (see ``ProviderAdapter``): it answers any request
with ``mock_response``, and is priced as the provider its requested model names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from llmrpc.v1 import completion_service_pb2 as pb

from ..proto_json import dumps
from .base import ErrorKind, HttpCall, ProviderAdapter, ProviderError, StreamEvent, Target, UpstreamReply
from .common import new_completion_id, now
from .openai import OPENAI_PARAMS, OpenAIAdapter, OpenAISpec

__all__ = ["MOCK_SCHEME", "MockAdapter", "MockReply", "MockTransport", "adapters", "answer"]

MOCK_SCHEME = "mock://"

# LiteLLM's mock_response error strings, as the HTTP error an upstream would send.
_MOCK_ERRORS: dict[str, tuple[int, str, str]] = {
    "litellm.RateLimitError": (429, "rate_limit_exceeded", "Rate limit reached (mock)"),
    "litellm.InternalServerError": (500, "server_error", "The server had an error (mock)"),
    "litellm.ServiceUnavailableError": (503, "server_error", "Service unavailable (mock)"),
    "litellm.BadRequestError": (400, "invalid_request_error", "Bad request (mock)"),
    "litellm.AuthenticationError": (401, "invalid_api_key", "Incorrect API key provided (mock)"),
    "litellm.NotFoundError": (404, "model_not_found", "The model does not exist (mock)"),
    "litellm.ContextWindowExceededError": (
        400, "context_length_exceeded", "This model's maximum context length is 8192 tokens (mock)"),
    "litellm.ContentPolicyViolationError": (
        400, "content_policy_violation", "Your request was rejected by our content policy (mock)"),
}
_MOCK_USAGE = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}


class MockAdapter(OpenAIAdapter):
    """OpenAI codec pointed at the in-process mock upstream; needs no key."""

    answers_field = "mock_response"  # LiteLLM: mock_response answers whatever the model
    priced_as_requested = True
    litellm_body_keys = frozenset({"mock_tool_calls"})  # LiteLLM's own argument, answered by the mock

    def __init__(self) -> None:
        self.transport = MockTransport()
        super().__init__(
            OpenAISpec(
                name="mock", default_base=f"{MOCK_SCHEME}local", env_keys=(), key_required=False,
                supported_params=OPENAI_PARAMS | {"thinking"},
            )
        )

    def adjust_body(self, body: dict[str, Any], req: pb.CompleteRequest, target: Target) -> None:
        if req.HasField("mock_response"):
            body["mock_response"] = req.mock_response


@dataclass
class MockReply:
    """What the in-process upstream answers: a JSON body, or SSE ``data`` payloads."""

    status: int
    body: bytes = b""
    events: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def answer(call: HttpCall) -> MockReply:
    """Answer one OpenAI-shaped request the way LiteLLM's mock_response does."""
    body: dict[str, Any] = call.body
    rejected = _reject(body)
    if rejected is not None:
        return rejected
    text = body.get("mock_response")
    delay = float(body.get("mock_delay") or 0.0)
    if isinstance(text, str) and text in _MOCK_ERRORS:
        status, code, message = _MOCK_ERRORS[text]
        err = {"error": {"message": message, "type": code, "param": None, "code": code}}
        return MockReply(status, dumps(err), headers={"retry-after": "0"} if status == 429 else {}, delay=delay)
    content = text if isinstance(text, str) else _echo(body.get("messages") or [])
    n = int(body.get("n") or 1)
    if body.get("stream"):
        events = _stream_events(content, body, n)
        return MockReply(200, events=events, delay=delay, headers={"content-type": "text/event-stream"})
    return MockReply(200, dumps(_completion(content, body, n)), delay=delay)


def _reject(body: dict[str, Any]) -> MockReply | None:
    """A 400 naming the field, as a strict upstream answers a body it cannot use (``extra_body`` is
    merged in verbatim, so any of these may hold anything)."""
    checks = (
        ("n", _number(body.get("n", 1), 1, 128, whole=True), "must be an integer from 1 to 128"),
        ("messages", isinstance(body.get("messages"), list)
         and all(isinstance(m, dict) for m in body["messages"]), "must be a list of message objects"),
        ("mock_delay", _number(body.get("mock_delay", 0), 0, 600), "must be a number of seconds from 0 to 600"),
        ("mock_response", isinstance(body.get("mock_response", ""), str), "must be a string"),
        ("stream_options", isinstance(body.get("stream_options", {}), dict | None), "must be an object"),
        ("model", isinstance(body.get("model", ""), str), "must be a string"),
    )
    for param, ok, message in checks:
        if not ok:
            err = {"error": {"message": f"{param}: {message}", "type": "invalid_request_error",
                             "param": param, "code": "invalid_value"}}
            return MockReply(400, dumps(err))
    return None


def _number(value: Any, low: float, high: float, *, whole: bool = False) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float) or (whole and not isinstance(value, int)):
        return False
    return low <= value <= high  # False for NaN


def _echo(messages: list[dict[str, Any]]) -> str:
    for msg in reversed(messages):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return f"This is a mock response from llmrpc. You said: {content}"
    return "This is a mock response from llmrpc."


def _completion(content: str, body: dict[str, Any], n: int) -> dict[str, Any]:
    choices: list[dict[str, Any]] = [
        {"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
        for i in range(n)
    ]
    calls = body.get("mock_tool_calls")
    if isinstance(calls, list) and calls:  # LiteLLM's mock_tool_calls: the first choice calls them
        choices[0]["message"]["tool_calls"] = [_mock_tool_call(i, c) for i, c in enumerate(calls)]
    return {
        "id": new_completion_id(), "object": "chat.completion", "created": now(), "model": body.get("model"),
        "system_fingerprint": None, "choices": choices, "usage": _MOCK_USAGE,
    }


def _mock_tool_call(index: int, call: Any) -> dict[str, Any]:
    data: dict[str, Any] = call if isinstance(call, dict) else {}
    raw = data.get("function")
    function: dict[str, Any] = raw if isinstance(raw, dict) else {}
    arguments = function.get("arguments", "")
    return {
        "id": str(data.get("id") or f"call_mock_{index}"), "type": "function",
        "function": {"name": str(function.get("name") or ""),
                     "arguments": arguments if isinstance(arguments, str) else dumps(arguments).decode()},
    }


def _stream_events(content: str, body: dict[str, Any], n: int) -> list[str]:
    """LiteLLM streams mock text in 4-character pieces."""
    head = {"id": new_completion_id(), "object": "chat.completion.chunk", "created": now(), "model": body.get("model")}
    pieces = [content[i : i + 4] for i in range(0, len(content), 4)] or [""]
    events = []
    for choice in range(n):
        events.append(_chunk(head, choice, {"role": "assistant", "content": ""}))
        events.extend(_chunk(head, choice, {"content": piece}) for piece in pieces)
        events.append(_chunk(head, choice, {}, finish="stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(dumps({**head, "choices": [], "usage": _MOCK_USAGE}).decode())
    events.append("[DONE]")
    return events


def _chunk(head: dict[str, Any], index: int, delta: dict[str, Any], finish: str | None = None) -> str:
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    return dumps({**head, "choices": [choice]}).decode()


class MockTransport:
    """The in-process upstream, as the executor's transport for ``mock://`` URLs."""

    async def send(self, call: HttpCall, *, timeout: float) -> UpstreamReply:
        started = time.perf_counter()
        reply = answer(call)
        await _delay(reply, timeout)
        return UpstreamReply(reply.status, reply.headers, reply.body, _ms_since(started))

    @asynccontextmanager
    async def stream(self, call: HttpCall, *, timeout: float) -> AsyncIterator[_MockStream]:
        started = time.perf_counter()
        reply = answer(call)
        await _delay(reply, timeout)
        yield _MockStream(reply, _ms_since(started))


class _MockStream:
    """A mock reply as an upstream stream: all its events in one batch."""

    def __init__(self, reply: MockReply, latency_ms: float) -> None:
        self.reply = reply
        self.status = reply.status
        self.headers: Mapping[str, str] = reply.headers
        self.latency_ms = latency_ms
        self._sent = False

    async def read_body(self) -> bytes:
        return self.reply.body

    async def next_events(self, timeout: float) -> list[StreamEvent] | None:
        if self._sent:
            return None
        self._sent = True
        return [StreamEvent(data=e) for e in self.reply.events]


async def _delay(reply: MockReply, timeout: float) -> None:
    """``mock_delay``: a reply later than ``timeout`` is a timeout, as from a slow upstream."""
    if reply.delay > timeout:
        await asyncio.sleep(timeout)
        raise ProviderError(ErrorKind.TIMEOUT, f"mock upstream did not answer within {timeout:.3g}s")
    if reply.delay:
        await asyncio.sleep(reply.delay)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def adapters(env: Mapping[str, str] | None = None) -> list[ProviderAdapter[Any]]:
    """The ``mock/`` provider."""
    return [MockAdapter()]
