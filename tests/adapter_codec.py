"""Run a provider adapter on byte fixtures, without a server or a network: the codec test template.

An adapter is pure, so everything it does can be checked by feeding it the bytes an upstream sends and
reading the protos it makes. These helpers drive it exactly as the pipeline does (``decode_reply``,
the executor's SSE/NDJSON decoder, ``StreamDecoder``), so a fixture test exercises the same contract
the gateway enforces, end-of-stream check included. ``tests/test_adapter_contract.py`` shows them
applied to real adapters; copy one of its test groups for a new provider.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc_server.providers.base import (
    HttpCall,
    ProviderAdapter,
    StreamDecoder,
    StreamEvent,
    Target,
    UpstreamReply,
    decode_reply,
)
from llmrpc_server.sse import make_decoder

__all__ = ["build", "events_of", "reply", "stream", "target_for"]


def target_for(adapter: ProviderAdapter[Any], model: str, *, api_key: str | None = "sk-test",
               api_base: str = "http://upstream.test/v1") -> Target:
    """Where a call of ``adapter`` to ``model`` goes, as the router would resolve it."""
    return Target(provider=adapter.name, model=model, api_base=api_base, api_key=api_key,
                  requested_model=f"{adapter.name}/{model}")


def build(adapter: ProviderAdapter[Any], req: pb.CompleteRequest, *, stream: bool = False,
          include_usage: bool = False) -> HttpCall:
    """The upstream request the adapter builds for ``req``."""
    return adapter.build_request(req, target_for(adapter, req.model), stream=stream, include_usage=include_usage)


def reply(adapter: ProviderAdapter[Any], req: pb.CompleteRequest, body: bytes, *, status: int = 200,
          headers: Mapping[str, str] | None = None) -> pb.CompleteResponse:
    """A whole upstream answer decoded as the pipeline decodes it: a response, or the adapter's
    classified ``ProviderError`` for a non-2xx status."""
    return decode_reply(adapter, UpstreamReply(status, dict(headers or {}), body, 0.0), req,
                        target_for(adapter, req.model))


def events_of(data: bytes, stream_format: str = "sse", *, piece: int = 0) -> list[StreamEvent]:
    """The events the executor's decoder makes of ``data``, fed whole or ``piece`` bytes at a time
    (network reads split events anywhere; the result must not depend on where)."""
    decoder = make_decoder(stream_format)
    step = piece or max(len(data), 1)
    events = [e for i in range(0, len(data), step) for e in decoder.feed(data[i:i + step])]
    return events + decoder.close()


def stream(adapter: ProviderAdapter[Any], req: pb.CompleteRequest, data: bytes, *,
           piece: int = 0) -> list[pb.StreamCompleteResponse]:
    """The chunks a stream body makes; raises ``ProviderError`` as the pipeline would (an upstream
    error event, or PROVIDER_STREAM_ERROR for a stream that never finished)."""
    call = build(adapter, req, stream=True)
    decoder = StreamDecoder(adapter, req, target_for(adapter, req.model))
    chunks = [c for event in events_of(data, call.stream_format, piece=piece) for c in decoder.feed(event)]
    return chunks + list(decoder.close())
