"""A fast local OpenAI-compatible upstream for benchmarks (its own process, canned bytes)."""

from __future__ import annotations

import json
import sys

from aiohttp import web

UNARY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench-model",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22},
}).encode()


def _sse(chunks: int) -> bytes:
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "bench-model"}
    events = [dict(head, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    events += [dict(head, choices=[{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}])
               for i in range(chunks - 2)]
    events.append(dict(head, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return body + b"data: [DONE]\n\n"


STREAM = _sse(50)


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        return web.Response(body=UNARY, content_type="application/json")
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(STREAM)
    await resp.write_eof()
    return resp


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
