"""``web_search_options`` end to end: passed on to OpenAI-style hosts, Anthropic's server-side
``web_search`` tool, Gemini's ``googleSearch`` tool; the cited answer comes back as content (with
Anthropic's citations, Gemini's grounding as ``url_citation`` annotations), never as tool calls."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import llmrpc
import pytest
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc_server.providers.chat_json import web_search_to_openai

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream, JSONReply, SSEReply
from tests.upstreams import anthropic as fa
from tests.upstreams import gemini as fg
from tests.upstreams import openai as oai

USER = [{"role": "user", "content": "When was Claude Shannon born?"}]
SEARCH: dict[str, Any] = {
    "search_context_size": "medium",
    "user_location": {"type": "approximate", "approximate": {"city": "Oslo", "country": "NO"}},
}
WIKI = "https://en.wikipedia.org/wiki/Claude_Shannon"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oai.default_handler) as up:
        yield up


@pytest.fixture(scope="module")
def client(upstream: FakeUpstream) -> Iterator[llmrpc.Client]:
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_API_BASE": upstream.url,
           "ANTHROPIC_API_KEY": "sk-ant", "ANTHROPIC_API_BASE": upstream.url,
           "GEMINI_API_KEY": "g-key", "GEMINI_API_BASE": upstream.url,
           "MISTRAL_API_KEY": "m-key", "MISTRAL_API_BASE": upstream.url}
    with GatewayThread(gateway_settings(env)) as gateway, llmrpc.Client(gateway.address) as c:
        yield c


@pytest.fixture(autouse=True)
def _fresh(upstream: FakeUpstream) -> Iterator[None]:
    upstream.reset()
    yield


def test_the_client_builds_the_typed_field() -> None:
    req = llmrpc._convert.build_request({"model": "openai/gpt-4o-search-preview", "web_search_options": SEARCH})
    assert req.web_search_options.search_context_size == "medium"
    assert req.web_search_options.user_location.approximate.city == "Oslo"
    assert not req.HasField("extra_body")
    empty = llmrpc._convert.build_request({"model": "m", "web_search_options": {}})
    assert empty.HasField("web_search_options")  # {} still asks for search


def test_openai_gets_the_options_and_annotations_come_back(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    note = {"type": "url_citation", "url_citation": {"start_index": 0, "end_index": 20, "title": "Wiki", "url": WIKI}}
    upstream.enqueue(oai.chat_completion("Born April 30, 1916.", extra_message={"annotations": [note]}))
    msg = client.completion("openai/gpt-4o-search-preview", USER, web_search_options=SEARCH).choices[0].message
    assert upstream.requests[-1].json()["web_search_options"] == SEARCH
    assert msg.annotations == [note]


def test_only_what_was_set_is_sent() -> None:
    assert web_search_to_openai(pb.WebSearchOptions()) == {}
    opts = pb.WebSearchOptions(user_location=pb.UserLocation(approximate=pb.ApproximateLocation(timezone="UTC")))
    assert web_search_to_openai(opts) == {"user_location": {"type": "approximate", "approximate": {"timezone": "UTC"}}}


# ---- anthropic -----------------------------------------------------------------------------------

SERVER_USE = {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search",
              "input": {"query": "claude shannon birth date"}}
RESULTS = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01", "content": [
    {"type": "web_search_result", "url": WIKI, "title": "Claude Shannon - Wikipedia",
     "encrypted_content": "EqgfCioIARgBIiQ3YTAw", "page_age": "April 30, 2025"}]}
CITATION = {"type": "web_search_result_location", "url": WIKI, "title": "Claude Shannon - Wikipedia",
            "encrypted_index": "Eo8BCioIAhgBIiQy", "cited_text": "Claude Elwood Shannon (April 30, 1916 - ..."}


def test_anthropic_gets_its_search_tool(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    body = {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "I'll search. "}, SERVER_USE, RESULTS,
                        {"type": "text", "text": "He was born on April 30, 1916.", "citations": [CITATION]}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 6039, "output_tokens": 93, "server_tool_use": {"web_search_requests": 1}}}
    upstream.enqueue(JSONReply(200, body, fa.response_headers()))
    resp = client.completion("anthropic/claude-sonnet-4-5", USER, web_search_options=SEARCH)
    tools = upstream.requests[-1].json()["tools"]
    assert tools == [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5,
                      "user_location": {"type": "approximate", "city": "Oslo", "country": "NO"}}]
    msg = resp.choices[0].message
    assert msg.content == "I'll search. He was born on April 30, 1916."
    assert msg.tool_calls is None and resp.choices[0].finish_reason == "stop"  # Anthropic ran the search
    assert msg.provider_specific_fields["citations"] == [[CITATION]]
    assert resp.usage.server_tool_use is not None and resp.usage.server_tool_use.web_search_requests == 1
    # Tokens (6039 in at $3/M, 93 out at $15/M) plus the search at $10 per 1,000.
    assert resp._hidden_params["response_cost"] == pytest.approx(0.018117 + 0.001395 + 0.01)


@pytest.mark.parametrize(("size", "max_uses"), [("low", 1), ("high", 10), (None, None)])
def test_anthropic_max_uses_from_context_size(
    client: llmrpc.Client, upstream: FakeUpstream, size: str | None, max_uses: int | None
) -> None:
    options = {} if size is None else {"search_context_size": size}
    upstream.enqueue(fa.message("ok"))
    client.completion("anthropic/claude-sonnet-4-5", USER, web_search_options=options,
                      tools=[{"type": "function", "function": {"name": "lookup"}}])
    tools = upstream.requests[-1].json()["tools"]
    assert [t["name"] for t in tools] == ["lookup", "web_search"]
    assert tools[1].get("max_uses") == max_uses and "user_location" not in tools[1]


def test_anthropic_stream_skips_the_server_tool_blocks(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    start = {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}
    events = [
        fa.event("message_start", {"type": "message_start", "message": start}),
        *_block(0, {**SERVER_USE, "input": {}}, [{"type": "input_json_delta", "partial_json": '{"query": "sh'},
                                                 {"type": "input_json_delta", "partial_json": 'annon"}'}]),
        *_block(1, RESULTS, []),
        *_block(2, {"type": "text", "text": ""}, [{"type": "citations_delta", "citation": CITATION},
                                                  {"type": "text_delta", "text": "April 30, 1916."}]),
        fa.event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                   "usage": {"output_tokens": 20, "server_tool_use": {"web_search_requests": 2}}}),
        fa.event("message_stop", {"type": "message_stop"}),
    ]
    upstream.enqueue(SSEReply(events, 200, fa.response_headers()))
    chunks = list(client.completion("anthropic/claude-sonnet-4-5", USER, stream=True, web_search_options={},
                                    stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    usage = chunks[-1].usage
    assert usage is not None and usage.server_tool_use is not None
    assert usage.server_tool_use.web_search_requests == 2
    assert all(not d.tool_calls for d in deltas)
    assert "".join(d.content or "" for d in deltas) == "April 30, 1916."
    assert [d.provider_specific_fields["citation"] for d in deltas if d.provider_specific_fields] == [CITATION]
    assert upstream.requests[-1].json()["tools"] == [{"type": "web_search_20250305", "name": "web_search"}]


def _block(index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> list[str]:
    return [fa.event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}),
            *(fa.event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
              for d in deltas),
            fa.event("content_block_stop", {"type": "content_block_stop", "index": index})]


# ---- gemini --------------------------------------------------------------------------------------

BRITANNICA = "https://www.britannica.com/biography/Claude-Shannon"
GROUNDING = fg.grounding_metadata(
    [(WIKI, "wikipedia.org"), (BRITANNICA, "britannica.com")],
    [(0, 15, [0]), (16, 31, [0, 1]), (32, 40, [7])],  # index 7 does not exist: skipped
)


def _note(start: int, end: int, title: str, url: str) -> dict[str, Any]:
    return {"type": "url_citation", "url_citation": {"start_index": start, "end_index": end, "title": title,
                                                     "url": url}}


EXPECTED_NOTES = [_note(0, 15, "wikipedia.org", WIKI), _note(16, 31, "wikipedia.org", WIKI),
                  _note(16, 31, "britannica.com", BRITANNICA)]


def test_answers_without_server_tools_have_no_server_tool_use(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(fa.message("ok"))
    usage = client.completion("anthropic/claude-sonnet-4-5", USER).usage
    assert usage.server_tool_use is None and "server_tool_use" not in usage.model_dump()


def test_gemini_gets_google_search_and_grounding_becomes_annotations(
    client: llmrpc.Client, upstream: FakeUpstream
) -> None:
    upstream.enqueue(fg.generate_content("Claude Shannon was born on April 30, 1916.", grounding=GROUNDING))
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    msg = client.completion("gemini/gemini-2.5-flash", USER, web_search_options=SEARCH,
                            tools=[weather]).choices[0].message
    tools = upstream.requests[-1].json()["tools"]
    assert tools[1] == {"googleSearch": {}} and tools[0]["functionDeclarations"][0]["name"] == "get_weather"
    assert msg.annotations == EXPECTED_NOTES


def test_gemini_stream_carries_the_annotations_on_the_last_chunk(
    client: llmrpc.Client, upstream: FakeUpstream
) -> None:
    upstream.enqueue(fg.stream_generate_content(["Claude Shannon ", "was born in 1916."], grounding=GROUNDING))
    chunks = list(client.completion("gemini/gemini-2.5-flash", USER, stream=True, web_search_options={}))
    noted = [c.choices[0].delta.annotations for c in chunks if c.choices and c.choices[0].delta.annotations]
    assert noted == [EXPECTED_NOTES]
    assert upstream.requests[-1].json()["tools"] == [{"googleSearch": {}}]


# ---- providers without web search ------------------------------------------------------------------

def test_a_provider_without_search_refuses_it_unless_dropped(client: llmrpc.Client, upstream: FakeUpstream) -> None:
    with pytest.raises(llmrpc.UnsupportedParamsError, match="web_search_options"):
        client.completion("mistral/mistral-small-latest", USER, web_search_options=SEARCH)
    client.completion("mistral/mistral-small-latest", USER, web_search_options=SEARCH, drop_params=True)
    assert "web_search_options" not in upstream.requests[-1].json()
