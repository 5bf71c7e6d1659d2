"""Self-tests for the fake provider upstreams: gateway tests are only as trustworthy as these fakes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest

from tests.upstreams import (
    FakeUpstream,
    JSONReply,
    NDJSONReply,
    RawReply,
    RecordedRequest,
    Reply,
    ResetReply,
    SSEReply,
    StallReply,
    anthropic,
    closed_port_url,
    gemini,
    ollama,
    openai,
)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


def sse_data(text: str) -> list[Any]:
    """Decode the `data:` payloads of an SSE body (skipping [DONE])."""
    out = []
    for event in text.split("\n\n"):
        for line in event.split("\n"):
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[len("data: ") :]))
    return out


def body_of(reply: JSONReply) -> dict[str, Any]:
    """A builder's JSON body as a dict (bodies may also be lists or raw strings in general)."""
    assert isinstance(reply.body, dict)
    return reply.body


def event_names(text: str) -> list[str]:
    return [line[len("event: ") :] for line in text.split("\n") if line.startswith("event: ")]


# ---- lifecycle -------------------------------------------------------------------------------------
def test_start_stop_and_no_leaked_threads() -> None:
    before = set(threading.enumerate())
    up = FakeUpstream().start()
    assert up.url.startswith("http://127.0.0.1:")
    assert httpx.get(up.url + "/anything").status_code == 404  # no default: 404 JSON
    up.stop()
    up.stop()  # idempotent
    assert set(threading.enumerate()) == before
    with pytest.raises(RuntimeError):
        _ = up.url
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{up._port}/")


def test_closed_port_url_refuses() -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(closed_port_url())


def test_records_requests(upstream: FakeUpstream) -> None:
    upstream.enqueue(JSONReply(201, {"ok": True}, {"x-extra": "1"}))
    r = httpx.post(upstream.url + "/v1/x?api-version=2024&key=k", json={"a": 1}, headers={"X-Api-Key": "s"})
    assert (r.status_code, r.json(), r.headers["x-extra"]) == (201, {"ok": True}, "1")
    assert r.headers["content-type"] == "application/json"
    rec = upstream.requests[0]
    assert (rec.method, rec.path, rec.query) == ("POST", "/v1/x", {"api-version": "2024", "key": "k"})
    assert rec.headers["x-api-key"] == "s" and rec.json() == {"a": 1}
    # Counters move on the server thread just after the last byte goes out: poll, don't read once.
    assert upstream.wait_for(lambda: upstream.completed == 1)


def test_fifo_then_default_then_reset() -> None:
    def default(req: RecordedRequest) -> Reply:
        return JSONReply(200, {"default": req.path})

    with FakeUpstream(default=default) as up:
        up.enqueue(JSONReply(200, {"n": 1}), RawReply(502, b"<html>bad gateway</html>", "text/html"))
        assert up.pending == 2
        assert httpx.get(up.url + "/a").json() == {"n": 1}
        bad = httpx.get(up.url + "/b")
        assert (bad.status_code, bad.text, bad.headers["content-type"]) == (
            502,
            "<html>bad gateway</html>",
            "text/html",
        )
        assert httpx.get(up.url + "/c").json() == {"default": "/c"}
        up.enqueue(JSONReply(200, "{not json"))
        assert httpx.get(up.url + "/d").text == "{not json"
        up.enqueue(JSONReply())
        up.reset()
        assert (up.requests, up.pending, up.completed) == ([], 0, 0)


def test_crashing_default_becomes_500() -> None:
    def broken(req: RecordedRequest) -> Reply:
        raise KeyError("boom")

    with FakeUpstream(default=broken) as up:
        r = httpx.get(up.url)
        assert r.status_code == 500 and "boom" in r.json()["error"]["message"]


def test_big_request_body_is_accepted(upstream: FakeUpstream) -> None:
    upstream.enqueue(JSONReply())
    assert httpx.post(upstream.url, content=b"x" * 3_000_000).status_code == 200
    assert len(upstream.requests[0].body) == 3_000_000


# ---- SSE framing -----------------------------------------------------------------------------------
def test_openai_stream_bytes_exact(upstream: FakeUpstream) -> None:
    upstream.enqueue(openai.chat_stream(["Hi"], include_usage=False, model="m", id="c1"))
    r = httpx.post(upstream.url + "/v1/chat/completions")
    head = (
        '{"id":"c1","object":"chat.completion.chunk","created":1700000000,"model":"m",'
        '"system_fingerprint":"fp_fake",'
    )
    expected = (
        f'data: {head}"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},'
        '"logprobs":null,"finish_reason":null}]}\n\n'
        f'data: {head}"choices":[{{"index":0,"delta":{{"content":"Hi"}},'
        '"logprobs":null,"finish_reason":null}]}\n\n'
        f'data: {head}"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}]}}\n\n'
        "data: [DONE]\n\n"
    )
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.content == expected.encode()


async def test_events_are_flushed_one_by_one_with_first_delay(upstream: FakeUpstream) -> None:
    """Runs on pytest's loop while the server runs on its own: the cross-loop use gateways need."""
    upstream.enqueue(SSEReply(["data: 1", "data: 2"], first_delay=0.5, delay=0.2))
    async with aiohttp.ClientSession() as session, session.get(upstream.url) as resp:
        t0 = time.monotonic()
        assert resp.status == 200  # headers arrive before first_delay elapses
        first = await resp.content.readuntil(b"\n\n")
        t1 = time.monotonic()
        second = await resp.content.readuntil(b"\n\n")
        t2 = time.monotonic()
        assert (first, second) == (b"data: 1\n\n", b"data: 2\n\n")
        assert t1 - t0 >= 0.3 and t2 - t1 >= 0.15  # headers came well before the body
        assert await resp.content.read() == b""
    assert upstream.wait_for(lambda: upstream.completed == 1)


def test_ndjson_reply(upstream: FakeUpstream) -> None:
    upstream.enqueue(NDJSONReply([{"a": 1}, "raw"]))
    r = httpx.get(upstream.url)
    assert r.headers["content-type"] == "application/x-ndjson" and r.content == b'{"a":1}\nraw\n'


# ---- faults ----------------------------------------------------------------------------------------
def test_reset_reply_sends_bytes_then_rst(upstream: FakeUpstream) -> None:
    upstream.enqueue(ResetReply(b'{"partial":'))
    got = b""
    with pytest.raises(httpx.ReadError), httpx.stream("GET", upstream.url) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            got += chunk
    assert got == b'{"partial":'
    assert upstream.completed == 0


def test_sse_then_reset(upstream: FakeUpstream) -> None:
    upstream.enqueue(SSEReply(["data: 1"], then="reset"))
    with pytest.raises(httpx.ReadError), httpx.stream("GET", upstream.url) as r:
        for _ in r.iter_raw():
            pass


def test_stall_times_out_and_counts_disconnect(upstream: FakeUpstream) -> None:
    upstream.enqueue(StallReply(30))
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(upstream.url, timeout=0.3)
    assert upstream.wait_for(lambda: upstream.disconnects == 1, timeout=2)
    assert time.monotonic() - t0 < 2


def test_stall_then_answers(upstream: FakeUpstream) -> None:
    upstream.enqueue(StallReply(0.3, then=JSONReply(200, {"late": True})))
    t0 = time.monotonic()
    assert httpx.get(upstream.url).json() == {"late": True}
    assert time.monotonic() - t0 >= 0.3


def test_hang_keeps_connection_open_until_client_leaves(upstream: FakeUpstream) -> None:
    upstream.enqueue(SSEReply(["data: 1"], then="hang"))
    got = []
    with pytest.raises(httpx.ReadTimeout), httpx.stream("GET", upstream.url, timeout=0.4) as r:
        for chunk in r.iter_raw():
            got.append(chunk)
    assert got == [b"data: 1\n\n"]
    assert upstream.wait_for(lambda: upstream.disconnects == 1)
    assert upstream.completed == 0


def test_stop_while_hanging_is_prompt() -> None:
    up = FakeUpstream().start()
    up.enqueue(SSEReply(["data: 1"], then="hang"))
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with httpx.stream("GET", up.url, timeout=10) as r:
                for _ in r.iter_raw():
                    pass
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    assert up.wait_for(lambda: len(up.requests) == 1)
    t0 = time.monotonic()
    up.stop()
    thread.join(5)
    assert time.monotonic() - t0 < 3 and len(errors) == 1
    assert (up.disconnects, up.completed) == (0, 0)


def test_client_disconnect_mid_stream_is_counted(upstream: FakeUpstream) -> None:
    upstream.enqueue(SSEReply([f"data: {i}" for i in range(50)], delay=0.05))
    with httpx.stream("GET", upstream.url) as r:
        assert next(r.iter_raw()) == b"data: 0\n\n"
    assert upstream.wait_for(lambda: upstream.disconnects == 1, timeout=3)
    assert upstream.completed == 0


def test_open_connections_tracks_keepalive(upstream: FakeUpstream) -> None:
    upstream.enqueue(JSONReply(), JSONReply())
    with httpx.Client() as client:
        client.get(upstream.url)
        client.get(upstream.url)
        assert upstream.open_connections == 1
    assert upstream.wait_for(lambda: upstream.open_connections == 0)


# ---- OpenAI ----------------------------------------------------------------------------------------
def test_openai_default_unary_and_stream() -> None:
    with FakeUpstream(default=openai.default_handler) as up:
        msgs = [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
        body = httpx.post(up.url + "/v1/chat/completions", json={"model": "m", "messages": msgs}).json()
        assert body["choices"][0]["message"]["content"] == "echo: hello there"
        assert body["usage"]["total_tokens"] == 12
        req = {"model": "m", "messages": msgs, "stream": True, "stream_options": {"include_usage": True}}
        r = httpx.post(up.url + "/openai/deployments/d1/chat/completions?api-version=1", json=req)
        chunks = sse_data(r.text)
        assert r.text.endswith("data: [DONE]\n\n")
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == (
            "echo: hello there"
        )
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 5
        assert all("usage" in c for c in chunks)
        assert httpx.post(up.url + "/v1/chat/completions", content=b"{").status_code == 400


def test_openai_tool_call_fragments_and_errors() -> None:
    reply = openai.chat_stream([], tool_calls=[("call_1", "f", ['{"a"', ":1}"])], reasoning_pieces=["hm"])
    chunks = [json.loads(e[6:]) for e in reply.events[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[1] == {"reasoning_content": "hm"}
    assert deltas[2]["tool_calls"][0] == {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    assert deltas[3]["tool_calls"][0] == {"index": 0, "function": {"arguments": '{"a"'}}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    broken = openai.chat_stream(["a", "b", "c"], error_after=1).events
    assert len(broken) == 3 and json.loads(broken[-1][6:])["error"]["type"] == "server_error"
    unary = body_of(openai.chat_completion(None, tool_calls=[("call_1", "f", "{}")]))
    assert unary["choices"][0]["finish_reason"] == "tool_calls"
    limited = openai.rate_limited(retry_after=2, retry_after_ms=1500)
    assert (limited.status, limited.headers["retry-after"], limited.headers["retry-after-ms"]) == (
        429,
        "2",
        "1500",
    )
    assert body_of(openai.context_length_exceeded())["error"]["code"] == "context_length_exceeded"


# ---- Anthropic -------------------------------------------------------------------------------------
def test_anthropic_default_unary_and_stream() -> None:
    with FakeUpstream(default=anthropic.default_handler) as up:
        url, hdrs = up.url + "/v1/messages", {"anthropic-version": "2023-06-01"}
        req: dict[str, Any] = {
            "model": "c",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "yo"}],
        }
        body = httpx.post(url, json=req, headers=hdrs).json()
        assert body["content"] == [{"type": "text", "text": "echo: yo"}] and body["stop_reason"] == "end_turn"
        r = httpx.post(url, json=req | {"stream": True}, headers=hdrs)
        assert event_names(r.text) == [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        missing = httpx.post(url, json=req)
        assert missing.status_code == 400 and missing.json()["type"] == "error"


def test_anthropic_stream_blocks_and_error_after() -> None:
    reply = anthropic.message_stream(
        ["a"], thinking=[(["t1", "t2"], "sig")], tool_uses=[("toolu_1", "f", ['{"x"', ":1}"])]
    )
    data = sse_data("\n\n".join(reply.events))
    starts = [d["content_block"]["type"] for d in data if d["type"] == "content_block_start"]
    assert starts == ["thinking", "text", "tool_use"]
    deltas = [d["delta"]["type"] for d in data if d["type"] == "content_block_delta"]
    assert (
        deltas
        == ["thinking_delta", "thinking_delta", "signature_delta", "text_delta"] + ["input_json_delta"] * 2
    )
    assert data[-2]["delta"]["stop_reason"] == "tool_use"
    broken = anthropic.message_stream(["a", "b", "c"], error_after=2).events
    assert event_names("\n".join(broken))[-1] == "error" and broken[-2].count("text_delta") == 1
    assert anthropic.overloaded().status == 529


# ---- Gemini ----------------------------------------------------------------------------------------
def test_gemini_default_unary_and_sse() -> None:
    with FakeUpstream(default=gemini.default_handler) as up:
        req = {"contents": [{"role": "user", "parts": [{"text": "hey you"}]}]}
        base = up.url + "/v1beta/models/gemini-2.5-flash"
        body = httpx.post(base + ":generateContent", json=req).json()
        assert body["candidates"][0]["content"]["parts"] == [{"text": "echo: hey you"}]
        r = httpx.post(base + ":streamGenerateContent?alt=sse&key=k", json=req)
        events = sse_data(r.text)
        assert "[DONE]" not in r.text and len(events) == 3
        assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == "echo: hey you"
        assert [("finishReason" in e["candidates"][0]) for e in events] == [False, False, True]
        assert events[-1]["usageMetadata"]["totalTokenCount"] == 12
        assert isinstance(httpx.post(base + ":streamGenerateContent", json=req).json(), list)
        assert httpx.post(up.url + "/v1beta/models/x:nope", json=req).json()["error"]["status"] == "NOT_FOUND"


def test_gemini_builders() -> None:
    body = body_of(gemini.generate_content(None, thoughts=["why"], function_calls=[("f", {"a": 1}, "c2ln")]))
    parts = body["candidates"][0]["content"]["parts"]
    assert parts == [
        {"text": "why", "thought": True},
        {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "c2ln"},
    ]
    blocked = body_of(gemini.generate_content(prompt_blocked="SAFETY"))
    assert "candidates" not in blocked
    assert blocked["promptFeedback"]["blockReason"] == "SAFETY"
    err = body_of(gemini.error(400, "INVALID_ARGUMENT", "bad", reason="API_KEY_INVALID"))
    assert err["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    broken = gemini.stream_generate_content(["a", "b"], error_after=1).events
    assert broken[0].startswith("data: ") and json.loads(broken[1])["error"]["code"] == 500


# ---- Ollama ----------------------------------------------------------------------------------------
def test_ollama_default_streams_unless_disabled() -> None:
    with FakeUpstream(default=ollama.default_handler) as up:
        req: dict[str, Any] = {"model": "llama3.2", "messages": [{"role": "user", "content": "ping me"}]}
        r = httpx.post(up.url + "/api/chat", json=req)
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert "".join(line["message"]["content"] for line in lines) == "echo: ping me"
        assert [line["done"] for line in lines][-2:] == [False, True] and lines[-1]["eval_count"] == 7
        unary = httpx.post(up.url + "/api/chat", json=req | {"stream": False}).json()
        assert unary["message"]["content"] == "echo: ping me" and unary["done"] is True
    tools = body_of(ollama.chat("", tool_calls=[("f", {"a": 1})]))
    assert tools["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {"a": 1}}}]
    assert ollama.error(404, "nope").body == {"error": "nope"}
