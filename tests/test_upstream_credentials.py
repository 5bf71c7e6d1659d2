"""The server's provider keys go only to the base URL the server configured for that provider.

Through the real gateway and two fake upstreams per case: ``home`` is the base the server was
configured with, ``elsewhere`` a host a caller names with ``api_base``. Every provider family is
covered: OpenAI-style Bearer (openai, groq, openrouter), Anthropic ``x-api-key``, Azure ``api-key``,
Gemini ``x-goog-api-key``, and the key-optional hosts (ollama, hosted_vllm)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import llmrpc
import pytest
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc
from llmrpc_server.errors import ServiceError
from llmrpc_server.providers import default_adapters
from llmrpc_server.router import Router

from tests.support import GatewayThread
from tests.upstreams import FakeUpstream, RecordedRequest, anthropic, gemini, ollama, openai

USER = [{"role": "user", "content": "hi"}]
SECRET = "srv-secret-key-0123456789"
StartGateway = Callable[..., GatewayThread]


@dataclass(frozen=True)
class Family:
    model: str
    key_env: str
    base_env: str
    handler: Callable[[RecordedRequest], object]
    header: str  # where the adapter puts the key
    key_required: bool = True


FAMILIES = [
    Family("openai/gpt-4o-mini", "OPENAI_API_KEY", "OPENAI_API_BASE", openai.default_handler, "authorization"),
    Family("groq/llama-3.1-8b-instant", "GROQ_API_KEY", "GROQ_API_BASE", openai.default_handler, "authorization"),
    Family("openrouter/openai/gpt-4o", "OPENROUTER_API_KEY", "OPENROUTER_API_BASE", openai.default_handler,
           "authorization"),
    Family("anthropic/claude-sonnet-4-5", "ANTHROPIC_API_KEY", "ANTHROPIC_API_BASE", anthropic.default_handler,
           "x-api-key"),
    Family("azure/my-deployment", "AZURE_API_KEY", "AZURE_API_BASE", openai.default_handler, "api-key"),
    Family("gemini/gemini-2.5-flash", "GEMINI_API_KEY", "GEMINI_API_BASE", gemini.default_handler,
           "x-goog-api-key"),
    Family("ollama_chat/llama3.2", "OLLAMA_API_KEY", "OLLAMA_API_BASE", ollama.default_handler, "authorization",
           key_required=False),
    Family("hosted_vllm/m1", "HOSTED_VLLM_API_KEY", "HOSTED_VLLM_API_BASE", openai.default_handler,
           "authorization", key_required=False),
]
IDS = [f.model.split("/")[0] for f in FAMILIES]


@dataclass
class Setup:
    family: Family
    home: FakeUpstream
    elsewhere: FakeUpstream
    client: llmrpc.Client
    gateway: GatewayThread

    def ask(self, **kwargs: object) -> object:
        return self.client.completion(self.family.model, USER, **kwargs)


@pytest.fixture(params=FAMILIES, ids=IDS)
def setup(request: pytest.FixtureRequest, start_gateway: StartGateway) -> Iterator[Setup]:
    family: Family = request.param
    with FakeUpstream(default=family.handler) as home, FakeUpstream(default=family.handler) as elsewhere:
        gw = start_gateway(env={family.key_env: SECRET, family.base_env: home.url})
        with llmrpc.Client(gw.address) as client:
            yield Setup(family, home, elsewhere, client, gw)


def leaked(req: RecordedRequest, secret: str = SECRET) -> bool:
    """True when ``secret`` appears anywhere in what an upstream received."""
    seen = " ".join([req.path, str(req.query), *req.headers.values(), req.body.decode("utf-8", "replace")])
    return secret in seen


def test_the_server_key_goes_to_the_configured_base(setup: Setup) -> None:
    setup.ask()
    sent = setup.home.requests[-1]
    assert SECRET in sent.headers[setup.family.header]
    assert setup.elsewhere.requests == []


def test_a_caller_named_base_without_a_key_is_refused_or_gets_no_server_key(setup: Setup) -> None:
    if setup.family.key_required:
        with pytest.raises(llmrpc.BadRequestError) as info:
            setup.ask(api_base=setup.elsewhere.url)
        assert info.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.reason == "INVALID_REQUEST"
        assert [f for f, _ in info.value.field_violations] == ["api_key"]
        assert setup.elsewhere.requests == [] and setup.home.requests == []  # refused before any connection
    else:  # a key-optional host: the call goes out with no credentials at all
        setup.ask(api_base=setup.elsewhere.url)
        sent = setup.elsewhere.requests[-1]
        assert setup.family.header not in sent.headers
        assert not leaked(sent)


def test_a_caller_named_base_gets_only_the_callers_key(setup: Setup) -> None:
    setup.ask(api_base=setup.elsewhere.url, api_key="caller-own-key-42")
    sent = setup.elsewhere.requests[-1]
    assert "caller-own-key-42" in sent.headers[setup.family.header]
    assert not leaked(sent)
    assert setup.home.requests == []


def test_naming_the_configured_base_keeps_the_server_key(setup: Setup) -> None:
    host = setup.home.url.split("//", 1)[1].rstrip("/")
    for spelling in (setup.home.url, setup.home.url + "/", f"HTTP://{host.upper()}//"):
        setup.ask(api_base=spelling)
        assert SECRET in setup.home.requests[-1].headers[setup.family.header], spelling
    assert setup.elsewhere.requests == []


def test_a_stream_names_request_api_key(start_gateway: StartGateway) -> None:
    with FakeUpstream(default=openai.default_handler) as home, FakeUpstream() as elsewhere:
        gw = start_gateway(env={"OPENAI_API_KEY": SECRET, "OPENAI_API_BASE": home.url})
        req = pb.CompleteRequest(model="openai/gpt-4o", api_base=elsewhere.url,
                                 messages=[chat_pb2.Message(role="user", content="hi")])
        with grpc.insecure_channel(gw.address) as channel:
            stub = pb_grpc.CompletionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                list(stub.StreamComplete(pb.StreamCompleteRequest(request=req), timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request.api_key" in (info.value.details() or "")
        assert elsewhere.requests == [] and home.requests == []


def test_a_fallback_that_would_use_the_server_key_elsewhere_is_refused_first(start_gateway: StartGateway) -> None:
    """ollama needs no key, but the openai fallback would: the whole call is refused before the
    first (ollama) request goes out."""
    with FakeUpstream(default=ollama.default_handler) as elsewhere:
        gw = start_gateway(env={"OPENAI_API_KEY": SECRET})
        with llmrpc.Client(gw.address) as client, pytest.raises(llmrpc.BadRequestError) as info:
            client.completion("ollama_chat/m", USER, api_base=elsewhere.url, fallbacks=["openai/gpt-4o"])
        assert [f for f, _ in info.value.field_violations] == ["api_key"]
        assert elsewhere.requests == []


def test_an_empty_api_key_is_no_key(setup: Setup) -> None:
    setup.ask(api_key="")  # the server's key, on the server's base
    assert SECRET in setup.home.requests[-1].headers[setup.family.header]
    if setup.family.key_required:
        with pytest.raises(llmrpc.BadRequestError, match="api_key"):
            setup.ask(api_base=setup.elsewhere.url, api_key="")
        assert setup.elsewhere.requests == []


@pytest.mark.parametrize("key", ["has space", "line\nbreak", "é", "k" * 4097])
def test_a_key_that_cannot_be_a_header_value_is_refused(start_gateway: StartGateway, key: str) -> None:
    with llmrpc.Client(start_gateway().address) as client, pytest.raises(llmrpc.BadRequestError) as info:
        client.completion("openai/gpt-4o", USER, api_key=key, api_base="http://127.0.0.1:9/v1")
    assert [f for f, _ in info.value.field_violations] == ["api_key"]
    assert key not in str(info.value)


# ---- the rule itself, on every adapter, with the default bases (no network needed) -------------


def _request(**fields: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=[chat_pb2.Message(role="user", content="hi")], **fields)


@pytest.mark.parametrize("name", sorted(set(default_adapters()) - {"mock"}))
def test_every_adapter_keeps_its_key_on_its_configured_base(name: str) -> None:
    adapter = default_adapters()[name]
    env = {adapter.env_keys[0]: SECRET}
    if not adapter.default_base:
        env[adapter.env_bases[0]] = "https://configured.example/base"
    router = Router(default_adapters(), env)
    model = f"{name}/some-model"
    home = router.resolve(_request(model=model), model).target
    assert home.api_key == SECRET and not home.key_from_caller
    scheme, _, rest = home.api_base.partition("://")
    host, _, path = rest.partition("/")
    spelling = f"{scheme.upper()}://{host.upper()}/{path}/"  # scheme and host are case-insensitive
    named = router.resolve(_request(model=model, api_base=spelling), model).target
    assert named.api_key == SECRET and named.api_base == home.api_base
    req = _request(model=model, api_base="https://attacker.example/v1")
    if adapter.key_required:
        with pytest.raises(ServiceError) as info:
            router.resolve(req, model)
        assert info.value.metadata["field"] == "api_key"
    else:
        assert router.resolve(req, model).target.api_key is None
    mine = router.resolve(_request(model=model, api_base="https://attacker.example/v1", api_key="mine"), model)
    assert mine.target.api_key == "mine" and mine.target.key_from_caller


def test_a_lookalike_of_the_default_base_is_not_the_default_base() -> None:
    router = Router(default_adapters(), {"OPENAI_API_KEY": SECRET})
    assert router.resolve(_request(api_base="https://API.OPENAI.COM:443/v1/"), "openai/x").target.api_key == SECRET
    for lookalike in ("https://api.openai.com.evil.example/v1", "http://api.openai.com/v1",
                      "https://api.openai.com:8443/v1", "https://api.openai.com/v1/admin", "https://api.openai.com"):
        with pytest.raises(ServiceError):
            router.resolve(_request(api_base=lookalike), "openai/x")


def test_the_mock_provider_never_leaves_the_process(start_gateway: StartGateway) -> None:
    with FakeUpstream(default=openai.default_handler) as elsewhere:
        gw = start_gateway()
        with llmrpc.Client(gw.address) as client:
            resp = client.completion("mock/echo", USER, api_base=elsewhere.url)
        assert resp.choices[0].message.content
        assert elsewhere.requests == []
