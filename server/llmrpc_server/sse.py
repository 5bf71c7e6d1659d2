"""Incremental decoders for upstream streams: Server-Sent Events and NDJSON.

Both are fed raw network chunks (which split lines anywhere) and return the complete events so far.
Lines that are JSON outside any SSE field (Gemini sends errors that way) are collected and
surfaced as one ``event="raw"`` event.
"""

from __future__ import annotations

from .providers.base import StreamEvent

__all__ = ["NDJSONDecoder", "SSEDecoder", "make_decoder"]

_FIELDS = frozenset({"data", "event", "id", "retry"})


class SSEDecoder:
    """The SSE parsing algorithm of the WHATWG spec, restricted to ``event`` and ``data``."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []
        self._raw: list[str] = []

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        complete, newline, self._buffer = (self._buffer + chunk).rpartition(b"\n")
        if not newline:  # no line ended yet: rpartition left everything in the last slot
            return []
        events: list[StreamEvent] = []
        # One decode for all complete lines: "\n" never occurs inside a UTF-8 multi-byte sequence.
        for line in complete.decode("utf-8", "replace").split("\n"):
            if line.startswith("data: "):  # the common case, short-circuiting _line
                self._data.append(line[6:].rstrip("\r"))
            else:
                self._line(line.rstrip("\r"), events)
        return events

    def close(self) -> list[StreamEvent]:
        """Flush at EOF: a final event without its blank line still counts."""
        events: list[StreamEvent] = []
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r").decode("utf-8", "replace"), events)
            self._buffer = b""
        self._line("", events)
        return events

    def _line(self, line: str, events: list[StreamEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line.startswith(":"):
            return  # comment / keep-alive (OpenRouter ": OPENROUTER PROCESSING")
        name, _, value = line.partition(":")
        if name not in _FIELDS:
            self._raw.append(line)  # not SSE at all, e.g. a pretty-printed JSON error body
            return
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value

    def _dispatch(self, events: list[StreamEvent]) -> None:
        if self._data:
            events.append(StreamEvent(data="\n".join(self._data), event=self._event))
        elif self._raw:
            events.append(StreamEvent(data="\n".join(self._raw), event="raw"))
            self._raw = []
        self._data = []
        self._event = None


class NDJSONDecoder:
    """One JSON document per line (Ollama)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [StreamEvent(data=line.decode("utf-8", "replace")) for line in lines if line.strip()]

    def close(self) -> list[StreamEvent]:
        rest, self._buffer = self._buffer, b""
        return [StreamEvent(data=rest.decode("utf-8", "replace"))] if rest.strip() else []


def make_decoder(stream_format: str) -> SSEDecoder | NDJSONDecoder:
    """The decoder for an :class:`HttpCall` ``stream_format``."""
    return NDJSONDecoder() if stream_format == "ndjson" else SSEDecoder()
