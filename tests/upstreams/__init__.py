"""Real local HTTP servers that speak LLM providers' wire formats, for testing the gateway end to end.

from tests.upstreams import FakeUpstream, openai
with FakeUpstream(default=openai.default_handler) as up:
    up.enqueue(openai.rate_limited(retry_after=0), openai.chat_completion("ok"))
    ...  # point the gateway at up.url, then assert on up.requests
"""

from . import anthropic, gemini, ollama, openai
from .server import (
    ClientGone,
    Exchange,
    FakeUpstream,
    JSONReply,
    NDJSONReply,
    RawReply,
    RecordedRequest,
    Reply,
    ResetReply,
    ServerStopping,
    SSEReply,
    StallReply,
    closed_port_url,
    dumps,
    split_text,
)

__all__ = [
    "ClientGone",
    "Exchange",
    "FakeUpstream",
    "JSONReply",
    "NDJSONReply",
    "RawReply",
    "RecordedRequest",
    "Reply",
    "ResetReply",
    "SSEReply",
    "ServerStopping",
    "StallReply",
    "anthropic",
    "closed_port_url",
    "dumps",
    "gemini",
    "ollama",
    "openai",
    "split_text",
]
