"""Image URLs downloaded for providers that take only inline data (Ollama), as LiteLLM does, with
the SSRF guard: by default only hosts that resolve to public addresses are fetched."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import llmrpc
import pytest
from llmrpc_server.config import Settings

from tests.support import GatewayThread
from tests.upstreams import FakeUpstream, RawReply, RecordedRequest, Reply
from tests.upstreams import ollama as oll

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
StartGateway = Callable[..., GatewayThread]


def serve_images(req: RecordedRequest) -> Reply:
    if req.method == "GET" and req.path == "/cat.png":
        return RawReply(200, PNG, "image/png")
    if req.path == "/photo":  # no extension: the content type names it
        return RawReply(200, PNG, "image/jpeg; charset=binary")
    if req.path == "/old.png":
        return RawReply(302, b"", "text/plain", {"location": "/cat.png"})
    if req.path == "/loop.png":
        return RawReply(302, b"", "text/plain", {"location": "/loop.png"})
    if req.path == "/big.png":
        return RawReply(200, PNG * 2000, "image/png")  # ~2.5 MB
    return RawReply(404, b"not found", "text/plain")


@pytest.fixture
def images() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=serve_images) as up:
        yield up


@pytest.fixture
def ollama() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oll.default_handler) as up:
        yield up


@pytest.fixture
def client_for(start_gateway: StartGateway, ollama: FakeUpstream) -> Iterator[Callable[..., llmrpc.Client]]:
    clients: list[llmrpc.Client] = []

    def make(**settings: Any) -> llmrpc.Client:
        gateway = start_gateway(env={"OLLAMA_API_BASE": ollama.url}, **settings)
        clients.append(llmrpc.Client(gateway.address))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def ask(*urls: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "What is this?"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": parts}]


def test_image_urls_are_sent_to_ollama_inline(client_for: Callable[..., llmrpc.Client], images: FakeUpstream,
                                               ollama: FakeUpstream) -> None:
    client = client_for(fetch_media="all")
    resp = client.completion("ollama_chat/llava", ask(f"{images.url}/cat.png", f"{images.url}/old.png"))
    assert resp.choices[0].message.content == "echo: What is this?"
    sent = ollama.requests[-1].json()["messages"][0]
    assert sent["images"] == [base64.b64encode(PNG).decode()] * 2  # the redirect was followed
    assert [r.path for r in images.requests] == ["/cat.png", "/old.png", "/cat.png"]
    assert images.requests[0].headers["accept"].startswith("image/*")


def test_streams_get_the_images_too(client_for: Callable[..., llmrpc.Client], images: FakeUpstream,
                                    ollama: FakeUpstream) -> None:
    chunks = list(client_for(fetch_media="all").completion("ollama_chat/llava", ask(f"{images.url}/photo"),
                                                           stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: What is this?"
    assert ollama.requests[-1].json()["messages"][0]["images"] == [base64.b64encode(PNG).decode()]


@pytest.mark.parametrize(
    ("path", "settings", "why"),
    [
        ("/missing.png", {}, "answered HTTP 404"),
        ("/loop.png", {}, "more than 5 redirects"),
        ("/big.png", {"fetch_media_max_mb": 1.0}, "exceeds"),
    ],
)
def test_a_bad_image_url_names_the_part(client_for: Callable[..., llmrpc.Client], images: FakeUpstream,
                                        ollama: FakeUpstream, path: str, settings: dict[str, Any], why: str) -> None:
    client = client_for(fetch_media="all", **settings)
    with pytest.raises(llmrpc.BadRequestError, match=why) as info:
        client.completion("ollama_chat/llava", ask(f"{images.url}/cat.png", f"{images.url}{path}"))
    assert [v[0] for v in info.value.field_violations] == ["messages[0].content_parts[2].image_url.url"]
    assert ollama.requests == []  # nothing half-fetched went upstream


def test_by_default_only_public_addresses_are_fetched(client_for: Callable[..., llmrpc.Client],
                                                      images: FakeUpstream, ollama: FakeUpstream) -> None:
    client = client_for()  # --fetch-media public
    for url in (f"{images.url}/cat.png", "http://169.254.169.254/latest/meta-data/", "http://[::1]:9/x.png"):
        with pytest.raises(llmrpc.BadRequestError, match="non-public address"):
            client.completion("ollama_chat/llava", ask(url))
    assert images.requests == [] and ollama.requests == []


def test_fetching_off_refuses_remote_urls(client_for: Callable[..., llmrpc.Client], ollama: FakeUpstream) -> None:
    with pytest.raises(llmrpc.BadRequestError, match="data URLs"):
        client_for(fetch_media="off").completion("ollama_chat/llava", ask("https://x.example/a.png"))
    assert ollama.requests == []


def test_providers_that_take_urls_get_them_unchanged(start_gateway: StartGateway, images: FakeUpstream) -> None:
    from tests.upstreams import openai as oai

    with FakeUpstream(default=oai.default_handler) as openai:
        gateway = start_gateway(env={"OPENAI_API_KEY": "sk-test", "OPENAI_API_BASE": openai.url}, fetch_media="all")
        with llmrpc.Client(gateway.address) as client:
            client.completion("openai/gpt-4o", ask(f"{images.url}/cat.png"))
        part = openai.requests[-1].json()["messages"][0]["content"][1]
        assert part == {"type": "image_url", "image_url": {"url": f"{images.url}/cat.png"}}
    assert images.requests == []


def test_the_mode_is_checked_at_startup() -> None:
    with pytest.raises(ValueError, match="fetch_media"):
        Settings.load({"fetch_media": "sometimes"}, environ={})
