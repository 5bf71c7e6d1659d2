"""Stream usage for callers that did not ask for it (no ``include_usage``).

OpenAI sends no usage chunk then, but LiteLLM keeps the usage a provider reported on the stream
(hidden) so ``stream_chunk_builder`` and cost tracking still see it. The gateway does the same: the
usage chunk becomes ``hidden_usage`` on the last chunk that carries a ``finish_reason`` (held back
until the next chunk shows whether usage follows, which at the end of a stream is immediate), so the
caller gets exactly the chunks an OpenAI stream has. A usage chunk with no finish chunk before it
is sent on its own, without choices.
"""

from __future__ import annotations

from llmrpc.v1 import completion_service_pb2 as pb

__all__ = ["UsageHider"]

_Chunks = tuple[pb.StreamCompleteResponse, ...]


class UsageHider:
    """Feed every chunk to :meth:`add`, then call :meth:`finish`; send what they return, in order."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: pb.StreamCompleteResponse | None = None

    def add(self, chunk: pb.StreamCompleteResponse) -> _Chunks:
        held = self._held
        if chunk.HasField("usage"):
            self._held = None
            return _merged(held, chunk)
        choices = chunk.choices
        if choices and choices[-1].HasField("finish_reason"):
            self._held = chunk
            return () if held is None else (held,)
        if held is None:
            return (chunk,)
        self._held = None
        return held, chunk

    def finish(self) -> _Chunks:
        held, self._held = self._held, None
        return () if held is None else (held,)


def _merged(held: pb.StreamCompleteResponse | None, usage_chunk: pb.StreamCompleteResponse) -> _Chunks:
    """``usage_chunk``'s usage (and metadata, which has the cost) moved onto ``held``; copies, because
    chunks may be shared with the response cache."""
    if held is None or usage_chunk.choices:
        out = pb.StreamCompleteResponse()
        out.CopyFrom(usage_chunk)
        out.ClearField("usage")
        out.hidden_usage.CopyFrom(usage_chunk.usage)
        return (out,) if held is None else (held, out)
    out = pb.StreamCompleteResponse()
    out.CopyFrom(held)
    out.hidden_usage.CopyFrom(usage_chunk.usage)
    if usage_chunk.HasField("metadata"):
        out.metadata.CopyFrom(usage_chunk.metadata)
    return (out,)
