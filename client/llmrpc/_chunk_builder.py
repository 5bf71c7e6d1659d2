"""``stream_chunk_builder``: fold stream chunks back into one ``ModelResponse``.

A pure reducer after LiteLLM's ``litellm.stream_chunk_builder`` (and Anthropic's
``accumulate_event``): no I/O, no token counting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._types import (
    ChatCompletionMessageToolCall,
    Choices,
    Function,
    Message,
    ModelResponse,
    ModelResponseStream,
    Usage,
    _new_id,
    _now,
)

__all__ = ["stream_chunk_builder"]


def stream_chunk_builder(
    chunks: Sequence[ModelResponseStream | Mapping[str, Any]], messages: Sequence[Any] | None = None
) -> ModelResponse | None:
    """Rebuild the whole response a stream delivered piecewise; ``None`` for no chunks (as LiteLLM).

    ``id`` is the first non-empty chunk id; ``created``, ``model`` and
    ``system_fingerprint`` come from the first chunk. Per choice index: content,
    reasoning and refusal joined; tool calls grouped by delta ``index`` (id and
    name from the fragment carrying them, arguments joined, ``"{}"`` if none);
    thinking fragments merged into blocks, a signature closing its block;
    ``finish_reason`` the last seen (default ``"stop"``). ``usage`` comes from
    the last chunk carrying one, else from the usage the gateway kept hidden on
    the stream (``_hidden_params["usage"]``, as LiteLLM does when
    ``include_usage`` was not asked for), else zeros. ``messages`` is accepted for
    LiteLLM compatibility; no tokens are counted here.
    """
    if not chunks:
        return None
    dumped = [_as_dict(chunk) for chunk in chunks]
    states: dict[int, _ChoiceState] = {}
    usage: Any = None
    for original, chunk in zip(chunks, dumped, strict=True):
        usage = chunk.get("usage") or _hidden(original).get("usage") or usage
        for choice in chunk.get("choices") or ():
            states.setdefault(choice.get("index") or 0, _ChoiceState()).add(choice)
    first = dumped[0]
    response = ModelResponse(
        id=next((c["id"] for c in dumped if c.get("id")), None) or _new_id(),
        created=first.get("created") or _now(),
        model=first.get("model"),
        system_fingerprint=first.get("system_fingerprint"),
        choices=[states[i].build(i) for i in sorted(states)] or [Choices(message=Message())],
        usage=Usage.model_validate(usage) if usage else Usage(),
        service_tier=next((c["service_tier"] for c in dumped if c.get("service_tier")), None),
    )
    # Each chunk's hidden params hold what was known by then; the last knows the cost too.
    response._hidden_params = {k: v for k, v in _hidden(chunks[-1]).items() if k != "usage"}
    return response


def _hidden(chunk: Any) -> dict[str, Any]:
    hidden = getattr(chunk, "_hidden_params", None)
    return hidden if isinstance(hidden, dict) else {}


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    dumped: dict[str, Any] = value.model_dump()
    return dumped


class _ChoiceState:
    """The accumulated message of one choice index."""

    def __init__(self) -> None:
        self.role: str | None = None
        self.finish_reason: str | None = None
        self.texts: dict[str, list[str]] = {"content": [], "reasoning_content": [], "refusal": []}
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, Any] | None = None
        self.thinking_blocks: list[dict[str, Any]] = []
        self.provider_specific_fields: dict[str, Any] | None = None
        self.annotations: list[Any] = []
        self.logprobs: list[Any] = []

    def add(self, choice: Mapping[str, Any]) -> None:
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        delta = choice.get("delta") or {}
        self.role = self.role or delta.get("role")
        for key, parts in self.texts.items():
            if delta.get(key) is not None:
                parts.append(delta[key])
        for fragment in delta.get("tool_calls") or ():
            self._add_tool_call(fragment)
        if delta.get("function_call"):
            self.function_call = _merge_call(self.function_call, delta["function_call"])
        for fragment in delta.get("thinking_blocks") or ():
            _merge_thinking(self.thinking_blocks, fragment)
        if delta.get("provider_specific_fields"):
            self.provider_specific_fields = {
                **(self.provider_specific_fields or {}),
                **delta["provider_specific_fields"],
            }
        self.annotations += delta.get("annotations") or []
        self.logprobs += (choice.get("logprobs") or {}).get("content") or []

    def _add_tool_call(self, fragment: Mapping[str, Any]) -> None:
        index = fragment.get("index") or 0
        call = self.tool_calls.get(index)
        if call is None:
            call = self.tool_calls[index] = {"id": None, "name": None, "arguments": "", "psf": None}
        call["id"] = call["id"] or fragment.get("id")
        merged = _merge_call(call, fragment.get("function") or {})
        call.update(name=merged["name"], arguments=merged["arguments"])
        if fragment.get("provider_specific_fields"):
            call["psf"] = {**(call["psf"] or {}), **fragment["provider_specific_fields"]}

    def build(self, index: int) -> Choices:
        def joined(key: str) -> str | None:
            return "".join(self.texts[key]) if self.texts[key] else None

        message = Message(
            content=joined("content"),
            role=self.role or "assistant",
            tool_calls=[_tool_call(self.tool_calls[i]) for i in sorted(self.tool_calls)] or None,
            function_call=Function(**self.function_call) if self.function_call else None,
            reasoning_content=joined("reasoning_content"),
            thinking_blocks=self.thinking_blocks or None,
            provider_specific_fields=self.provider_specific_fields,
            annotations=self.annotations or None,
            refusal=joined("refusal"),
        )
        logprobs = {"content": self.logprobs, "refusal": None} if self.logprobs else None
        return Choices(
            finish_reason=self.finish_reason or "stop", index=index, message=message, logprobs=logprobs
        )


def _merge_call(current: Mapping[str, Any] | None, fragment: Mapping[str, Any]) -> dict[str, Any]:
    name = (current or {}).get("name") or fragment.get("name")
    return {
        "name": name,
        "arguments": ((current or {}).get("arguments") or "") + (fragment.get("arguments") or ""),
    }


def _tool_call(call: Mapping[str, Any]) -> ChatCompletionMessageToolCall:
    return ChatCompletionMessageToolCall(
        id=call["id"],
        function=Function(name=call["name"], arguments=call["arguments"] or "{}"),
        provider_specific_fields=call["psf"],
    )


def _merge_thinking(blocks: list[dict[str, Any]], fragment: Mapping[str, Any]) -> None:
    """Append a thinking fragment: text extends the open block, a signature closes it."""
    if (fragment.get("type") or "thinking") != "thinking":
        blocks.append(dict(fragment))  # redacted_thinking arrives whole
        return
    last = blocks[-1] if blocks else None
    if last is None or last.get("type") != "thinking" or last.get("signature"):
        last = {"type": "thinking", "thinking": "", "signature": None}
        blocks.append(last)
    last["thinking"] += fragment.get("thinking") or ""
    if fragment.get("signature"):
        last["signature"] = fragment["signature"]
