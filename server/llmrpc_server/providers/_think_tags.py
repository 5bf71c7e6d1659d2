"""Reasoning inlined in the text as a leading ``<think>…</think>`` block (deepseek-r1, qwen3 and other
models served by Ollama without ``think``): split into ``reasoning_content`` and ``content``, as
LiteLLM does for ``ollama_chat/`` replies.

Only a block that opens the reply counts, so an answer that merely mentions ``<think>`` is left as it
is. The text after ``</think>`` is kept verbatim (usually it starts with a blank line), so that a
streamed reply joins up to exactly what the same reply gives unstreamed.
"""

from __future__ import annotations

__all__ = ["ThinkTagSplitter", "split_think_tags"]

OPEN, CLOSE = "<think>", "</think>"


def split_think_tags(text: str) -> tuple[str | None, str]:
    """``(reasoning, content)`` of a whole reply; reasoning is None without a leading block."""
    body = text.lstrip()
    if not body.startswith(OPEN):
        return None, text
    reasoning, closed, rest = body[len(OPEN):].partition(CLOSE)
    return reasoning, rest if closed else ""


class ThinkTagSplitter:
    """The same split over a stream of text pieces; tags may be cut anywhere between pieces.

    ``feed`` returns the ``(reasoning, content)`` text that is certain so far; a piece that could
    still be the start of a tag is held back until the next piece or :meth:`flush`.
    """

    def __init__(self) -> None:
        self._state = "start"  # start -> thinking -> content, or start -> content
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        if self._state == "content":
            return "", text
        self._held += text
        if self._state == "start":
            return self._opening()
        return self._thinking()

    def flush(self) -> tuple[str, str]:
        """What is still held when the stream ends (an unclosed block is all reasoning)."""
        held, self._held = self._held, ""
        if self._state == "thinking":
            return held, ""
        return "", held

    def _opening(self) -> tuple[str, str]:
        body = self._held.lstrip()
        if len(body) < len(OPEN) and OPEN.startswith(body):
            return "", ""  # only whitespace, or a tag still arriving
        if not body.startswith(OPEN):
            self._state = "content"
            held, self._held = self._held, ""
            return "", held
        self._state, self._held = "thinking", body[len(OPEN):]
        return self._thinking()

    def _thinking(self) -> tuple[str, str]:
        reasoning, closed, rest = self._held.partition(CLOSE)
        if closed:
            self._state, self._held = "content", ""
            return reasoning, rest
        keep = _partial_tag_suffix(self._held)
        ready = self._held[:len(self._held) - keep]
        self._held = self._held[len(ready):]
        return ready, ""


def _partial_tag_suffix(text: str) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of ``</think>``."""
    for size in range(min(len(CLOSE) - 1, len(text)), 0, -1):
        if CLOSE.startswith(text[-size:]):
            return size
    return 0
