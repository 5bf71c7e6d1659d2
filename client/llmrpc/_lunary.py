"""The ``"lunary"`` callback, in the caller's process, as LiteLLM's is.

Events have the JSON shape the ``lunary`` SDK sends for LiteLLM's integration: a ``start`` run event
(model, input messages, user, tags, parent run, metadata, params) and an ``end`` (output message, token
usage) or ``error`` event, batched to ``POST $LUNARY_API_URL/v1/runs/ingest`` (default
``https://api.lunary.ai``) with the key from ``LUNARY_PRIVATE_KEY`` / ``LUNARY_PUBLIC_KEY`` /
``LUNARY_APP_ID``. Run ids are derived from the call id and the key as the SDK derives them, so a
``metadata["parent_run_id"]`` taken from another Lunary-traced run links up.

The hooks only build an event and queue it (never blocking, dropping when the queue is full); one daemon
thread sends batches with httpx, and what is queued is flushed at exit. A failing or slow Lunary never
touches the call. With ``input_callback = ["lunary"]`` the ``start`` event goes as the call starts;
otherwise with the ``end``/``error`` event, as LiteLLM sends it.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import queue
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import httpx

from ._provider_keys import provider_of
from .integrations.custom_logger import CustomLogger

__all__ = ["LunaryLogger", "lunary_logger"]

log = logging.getLogger("llmrpc")
_DEFAULT_URL = "https://api.lunary.ai"
_BATCH = 100
_LINGER_S = 0.5  # the SDK's consumer sends every 0.5 s
_QUEUE_SIZE = 10_000
_SEND_TIMEOUT_S = 10.0
_EXIT_FLUSH_S = 5.0
_STARTED_MEMORY = 10_000  # call ids whose start event went out at input time
_PRIMITIVES = (str, int, bool, float)


def _key() -> str | None:
    env = os.environ
    return env.get("LUNARY_PRIVATE_KEY") or env.get("LUNARY_PUBLIC_KEY") or env.get("LUNARY_APP_ID")


def _run_uuid(value: Any, key: str | None) -> str:
    # The SDK's create_uuid_from_string(str(run_id) + str(app_id)): the first 128 bits of a SHA-256.
    return str(uuid.UUID(hashlib.sha256(f"{value}{key}".encode()).hexdigest()[:32]))


def _model_name(kwargs: dict[str, Any]) -> Any:
    """The model without its provider prefix (``openai/mistral`` -> ``mistral``), as LiteLLM names runs."""
    model = kwargs.get("model")
    if not isinstance(model, str):
        return model
    provider = provider_of(model, kwargs.get("custom_llm_provider"))
    return model.removeprefix(f"{provider}/") if provider else model


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _clean_message(message: Any) -> Any:
    if isinstance(message, str):
        return message
    data = message.model_dump() if hasattr(message, "model_dump") else dict(message)
    if "message" in data:
        return _clean_message(data["message"])
    out = {"role": data.get("role"), "content": data.get("content")}
    if data.get("tool_calls"):
        out["tool_calls"] = [_clean_tool_call(call) for call in data["tool_calls"] if call.get("function")]
    return out


def _clean_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {"type": call.get("type"), "id": call.get("id"),
            "function": {"name": function.get("name"), "arguments": function.get("arguments")}}


def _messages(value: Any) -> Any:
    """LiteLLM's ``parse_messages``: one message stays a dict, several become a list."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        items = list(value)
        return _clean_message(items[0]) if len(items) == 1 else [_clean_message(m) for m in items]
    return _clean_message(value)


def _params(kwargs: dict[str, Any]) -> dict[str, Any]:
    extra = dict(kwargs.get("optional_params") or {})
    extra.pop("extra_body", None)
    extra.pop("user", None)
    extra.pop("extra_headers", None)
    return {k: v if isinstance(v, _PRIMITIVES) or k == "tools" else str(v) for k, v in extra.items()}


def _event(kind: str, run_id: str, timestamp: datetime, **fields: Any) -> dict[str, Any]:
    """One event with every key the SDK's ``track_event`` puts in it."""
    event: dict[str, Any] = {
        "event": kind, "type": "llm", "name": None, "userId": None, "userProps": None, "tags": None,
        "threadTags": None, "runId": run_id, "parentRunId": None, "timestamp": _iso(timestamp),
        "message": None, "input": None, "output": None, "error": None, "feedback": None,
        "runtime": "llmrpc", "tokensUsage": None, "metadata": None, "params": None, "templateId": None,
        "appId": None, "threadMetadata": None,
    }
    event.update(fields)
    return event


class LunaryLogger(CustomLogger):
    """Builds Lunary events and hands them to :class:`_Sender`; see the module docstring."""

    inline = True  # cheap and non-blocking: the dispatcher runs it on the caller's thread, in order

    def __init__(self) -> None:
        super().__init__()
        self._sender = _Sender()
        self._started: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def _start(self, kwargs: dict[str, Any], start_time: datetime) -> dict[str, Any]:
        metadata = (kwargs.get("litellm_params") or {}).get("metadata") or {}
        key = _key()
        parent = metadata.get("parent_run_id")
        headers = kwargs.get("extra_headers") or {}
        return _event(
            "start", _run_uuid(kwargs.get("litellm_call_id"), key), start_time,
            name=_model_name(kwargs), userId=kwargs.get("user"), tags=metadata.get("tags"),
            parentRunId=_run_uuid(parent, key) if parent not in (None, "None") else None,
            input=_messages(kwargs.get("messages")), metadata=metadata, params=_params(kwargs),
            templateId=headers.get("Template-Id") if isinstance(headers, dict) else None,
        )

    def _start_sent(self, call_id: str) -> bool:
        with self._lock:
            return self._started.pop(call_id, False) is None

    def log_pre_api_call(self, model: str, messages: Any, kwargs: dict[str, Any]) -> None:
        call_id = str(kwargs.get("litellm_call_id"))
        with self._lock:
            self._started[call_id] = None
            while len(self._started) > _STARTED_MEMORY:
                self._started.popitem(last=False)
        self._sender.put(self._start(kwargs, kwargs.get("start_time") or datetime.now(UTC)))

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                          end_time: datetime) -> None:
        data = response_obj.model_dump() if hasattr(response_obj, "model_dump") else dict(response_obj or {})
        usage = data.get("usage") or {}
        end = _event(
            "end", _run_uuid(kwargs.get("litellm_call_id"), _key()), end_time,
            output=_messages(data.get("choices")),
            tokensUsage={"completion": usage.get("completion_tokens", 0), "prompt": usage.get("prompt_tokens", 0)}
            if "usage" in data else None,
        )
        self._finish(kwargs, start_time, end)

    def log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                          end_time: datetime) -> None:
        stack = kwargs.get("traceback_exception") or _format(kwargs.get("exception"))
        error = _event("error", _run_uuid(kwargs.get("litellm_call_id"), _key()), end_time,
                       error={"stack": stack})
        self._finish(kwargs, start_time, error)

    def _finish(self, kwargs: dict[str, Any], start_time: datetime, last: dict[str, Any]) -> None:
        if not self._start_sent(str(kwargs.get("litellm_call_id"))):
            self._sender.put(self._start(kwargs, start_time))
        self._sender.put(last)

    async def async_log_pre_api_call(self, model: str, messages: Any, kwargs: dict[str, Any]) -> None:
        return None  # log_pre_api_call already sent the start event for async calls too

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                                      end_time: datetime) -> None:
        self.log_success_event(kwargs, response_obj, start_time, end_time)

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                                      end_time: datetime) -> None:
        self.log_failure_event(kwargs, response_obj, start_time, end_time)

    def flush(self, timeout: float = _EXIT_FLUSH_S) -> None:
        """Send what is queued now (at most ``timeout`` seconds)."""
        self._sender.flush(timeout)


def _format(exc: Any) -> str | None:
    if isinstance(exc, BaseException):
        return "".join(traceback.format_exception(exc))
    return None if exc is None else str(exc)


class _Sender:
    """A bounded queue and one daemon thread posting batches; flushed at interpreter exit."""

    def __init__(self) -> None:
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(_QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._exit_hook = False
        self.dropped = 0
        self.failed = 0

    def put(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llmrpc-lunary", daemon=True)
                self._thread.start()
                if not self._exit_hook:
                    atexit.register(self.flush, _EXIT_FLUSH_S)
                    self._exit_hook = True

    def _run(self) -> None:
        # None in the queue means "send what you have and stop" (flush).
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            linger = time.monotonic() + _LINGER_S
            while len(batch) < _BATCH and (left := linger - time.monotonic()) > 0:
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if item is None:
                    self._send(batch)
                    return
                batch.append(item)
            self._send(batch)

    def flush(self, timeout: float) -> None:
        """Send everything queued (the thread drains the queue, then stops), waiting up to ``timeout``."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        thread.join(timeout)

    def _send(self, batch: list[dict[str, Any]]) -> None:
        key = _key()
        if not key:
            self.failed += len(batch)
            log.warning("lunary: no LUNARY_PUBLIC_KEY (or LUNARY_PRIVATE_KEY) set; %d event(s) dropped", len(batch))
            return
        url = (os.environ.get("LUNARY_API_URL") or _DEFAULT_URL).rstrip("/") + "/v1/runs/ingest"
        try:
            if self._client is None:
                self._client = httpx.Client(timeout=_SEND_TIMEOUT_S)
            # default=str: metadata may hold values JSON cannot (the SDK's jsonpickle stringifies them too)
            body = json.dumps({"events": batch}, default=str)
            response = self._client.post(url, content=body, headers={
                "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            response.raise_for_status()
        except Exception as exc:  # Lunary being down must never reach the caller
            self.failed += len(batch)
            log.warning("lunary: sending %d event(s) failed: %s", len(batch), exc)


_LOGGER: LunaryLogger | None = None
_LOGGER_LOCK = threading.Lock()


def lunary_logger() -> LunaryLogger:
    """The process's one Lunary logger (``"lunary"`` in any callback list)."""
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None:
            _LOGGER = LunaryLogger()
        return _LOGGER
