"""LiteLLM and llmrpc side by side on every provider family the fakes serve (openai, anthropic, gemini,
ollama): what callers get (content, finish reasons, usage with its details, stream shapes, exception
classes) and what the upstream receives. Known differences are listed in the README's "Differences
from LiteLLM" section; the exclusions below name the bullet they stand for."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import llmrpc
import pytest

from tests.parity import FAMILIES, Parity, close_litellm_clients, litellm, parity_env, volatile_free
from tests.upstreams import anthropic, gemini, ollama, openai

M = [{"role": "user", "content": "hello there friend"}]
NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module")
def fams() -> Iterator[dict[str, Parity]]:
    with parity_env() as env:
        yield env


def usage_view(usage: Any) -> dict[str, Any]:
    """The usage numbers callers read, details included (always objects on both sides)."""
    u = usage if isinstance(usage, dict) else usage.model_dump()
    completion, prompt = u.get("completion_tokens_details") or {}, u.get("prompt_tokens_details") or {}
    return {
        "prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
        "total_tokens": u["total_tokens"],
        # LiteLLM leaves these None (or the details unset) on Gemini and Ollama; llmrpc says 0.
        "reasoning_tokens": completion.get("reasoning_tokens") or 0,
        "cached_tokens": prompt.get("cached_tokens") or 0,
        "cache_read_input_tokens": u.get("cache_read_input_tokens", 0) or 0,
        "cache_creation_input_tokens": u.get("cache_creation_input_tokens", 0) or 0,
    }


def sent_view(family: str, sent: Any) -> dict[str, Any]:
    view = volatile_free(sent)
    body = view["body"]
    if family == "anthropic":  # README: default max_tokens for Anthropic; tool "type"
        body.pop("max_tokens", None)
        for tool in body.get("tools") or ():
            if tool.get("type") == "custom":
                del tool["type"]
    if family == "openai":  # README: cache_control on OpenAI
        for msg in body.get("messages") or ():
            for part in msg.get("content") if isinstance(msg.get("content"), list) else ():
                part.pop("cache_control", None)
    if family == "gemini":  # README: Gemini field-name spelling
        body = view["body"] = {_camel(k): v for k, v in body.items()}
        config = body.get("generationConfig") or {}
        body["generationConfig"] = {_camel(k): v for k, v in config.items()}
        body["tools"] = [{_camel(k): v for k, v in tool.items()} for tool in body.get("tools") or ()] or None
    if family == "ollama":  # README: Ollama's empty images list and content-type header
        for msg in body.get("messages") or ():
            if msg.get("images") == []:
                del msg["images"]
        view["headers"].pop("content-type", None)
    return view


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


@pytest.mark.parametrize("family", NAMES)
def test_text_answer_and_upstream_body(fams: dict[str, Parity], family: str) -> None:
    p = fams[family]
    ours, ours_sent = p.llmrpc(messages=M, temperature=0.5, max_tokens=50)
    theirs, their_sent = p.litellm(messages=M, temperature=0.5, max_tokens=50)
    assert ours.choices[0].message.content == theirs.choices[0].message.content
    assert ours.choices[0].finish_reason == theirs.choices[0].finish_reason
    assert ours.choices[0].message.role == theirs.choices[0].message.role
    assert usage_view(ours.usage) == usage_view(theirs.usage)
    assert sent_view(family, ours_sent) == sent_view(family, their_sent)


@pytest.mark.parametrize("family", NAMES)
def test_litellm_own_kwargs_never_reach_the_upstream(fams: dict[str, Parity], family: str) -> None:
    p = fams[family]
    own = {"tags": ["a"], "litellm_call_id": "call-1", "litellm_trace_id": "t-1", "input_cost_per_token": 1e-6,
           "no-log": True, "max_retries": 0, "request_timeout": 30, "user": "u-1", "mock_timeout": False,
           "metadata": {"k": "v"}, "additional_drop_params": ["seed"], "seed": 7}
    ours, ours_sent = p.llmrpc(messages=M, **own)
    theirs, their_sent = p.litellm(messages=M, **own)
    assert not isinstance(ours, Exception), ours
    assert not isinstance(theirs, Exception), theirs
    assert sent_view(family, ours_sent) == sent_view(family, their_sent)


@pytest.mark.parametrize("family", NAMES)
def test_stream_with_usage(fams: dict[str, Parity], family: str) -> None:
    p = fams[family]
    kwargs: dict[str, Any] = {"messages": M, "stream": True, "stream_options": {"include_usage": True}}
    ours, ours_sent = p.llmrpc(**kwargs)
    theirs, their_sent = p.litellm(**kwargs)
    for chunks in (ours, theirs):  # the usage chunk has an empty choice: choices[0].delta never raises
        assert chunks[-1].usage is not None and chunks[-1].choices[0].delta.content is None
        assert chunks[-1].choices[0].finish_reason is None
    text = "".join(c.choices[0].delta.content or "" for c in ours)
    assert text == "".join(c.choices[0].delta.content or "" for c in theirs)
    ours_built, theirs_built = llmrpc.stream_chunk_builder(ours), litellm.stream_chunk_builder(theirs)
    assert ours_built.choices[0].message.content == theirs_built.choices[0].message.content == text
    assert usage_view(ours_built.usage) == usage_view(theirs_built.usage)
    assert sent_view(family, ours_sent) == sent_view(family, their_sent)


@pytest.mark.parametrize("family", [n for n in NAMES if n != "openai"])  # README: OpenAI stream usage
def test_stream_without_include_usage_keeps_provider_usage(fams: dict[str, Parity], family: str) -> None:
    p = fams[family]
    ours, _ = p.llmrpc(messages=M, stream=True)
    theirs, _ = p.litellm(messages=M, stream=True)
    assert all(c.usage is None for c in ours)
    finals = [[c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
              for chunks in (ours, theirs)]
    assert finals[0] == finals[1][-1:]  # README: Gemini stream chunking
    assert usage_view(llmrpc.stream_chunk_builder(ours).usage) == usage_view(
        litellm.stream_chunk_builder(theirs).usage)


ERRORS = {
    "openai": {429: lambda: openai.rate_limited(retry_after=0), 401: openai.invalid_api_key,
               500: lambda: openai.server_error(500), 404: openai.model_not_found,
               400: openai.context_length_exceeded},
    "anthropic": {429: lambda: anthropic.rate_limited(), 401: anthropic.invalid_api_key,
                  529: anthropic.overloaded, 500: anthropic.api_error, 400: anthropic.prompt_too_long},
    "gemini": {429: gemini.resource_exhausted, 400: gemini.api_key_invalid, 503: gemini.unavailable,
               404: gemini.not_found},
    "ollama": {404: ollama.model_not_found, 500: lambda: ollama.error(500, "boom")},
}
CASES = [(f, s) for f in NAMES for s in sorted(ERRORS[f])]
# README: "529 and 503" — llmrpc keeps the upstream status and names 503 ServiceUnavailableError.
KNOWN = {("anthropic", 529): ("InternalServerError", 529, 500), ("gemini", 503): ("ServiceUnavailableError", 503, 500)}


@pytest.mark.parametrize(("family", "status"), CASES)
def test_error_classes(fams: dict[str, Parity], family: str, status: int) -> None:
    p = fams[family]
    p.upstream.enqueue(ERRORS[family][status]())
    ours, _ = p.llmrpc(messages=M)
    p.upstream.enqueue(ERRORS[family][status]())
    theirs, _ = p.litellm(messages=M)
    assert isinstance(ours, Exception) and isinstance(theirs, Exception)
    if (family, status) in KNOWN:
        name, our_status, their_status = KNOWN[(family, status)]
        assert (type(ours).__name__, ours.status_code, theirs.status_code) == (name, our_status, their_status)
        assert isinstance(ours, llmrpc.InternalServerError | llmrpc.ServiceUnavailableError)
        return
    assert type(ours).__name__ == type(theirs).__name__, (ours, theirs)
    assert getattr(ours, "status_code", None) == getattr(theirs, "status_code", None)


def test_pydantic_response_format_is_strict_as_litellm_sends_it(fams: dict[str, Parity]) -> None:
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    p = fams["openai"]
    _, ours_sent = p.llmrpc(messages=M, response_format=Person)
    _, their_sent = p.litellm(messages=M, response_format=Person)
    assert sent_view("openai", ours_sent) == sent_view("openai", their_sent)
    assert ours_sent is not None and ours_sent.json()["response_format"]["json_schema"]["strict"] is True


def test_organization_header_on_openai(fams: dict[str, Parity]) -> None:
    p = fams["openai"]
    _, ours_sent = p.llmrpc(messages=M, organization="org-1")
    _, their_sent = p.litellm(messages=M, organization="org-1")
    assert ours_sent is not None and their_sent is not None
    assert ours_sent.headers["openai-organization"] == their_sent.headers["openai-organization"] == "org-1"
    assert sent_view("openai", ours_sent) == sent_view("openai", their_sent)


def test_mock_tool_calls(fams: dict[str, Parity]) -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]
    ours = fams["openai"].client.completion(model="openai/gpt-4o", messages=M, mock_tool_calls=calls)
    theirs = litellm.completion(model="openai/gpt-4o", messages=M, mock_tool_calls=calls)
    for resp in (ours, theirs):
        call = resp.choices[0].message.tool_calls[0]
        assert (call.id, call.function.name, call.function.arguments) == ("call_1", "f", "{\"x\": 1}")
    assert ours.choices[0].message.content == theirs.choices[0].message.content


def test_token_counter_matches_for_plain_messages(fams: dict[str, Parity]) -> None:
    client = fams["openai"].client
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there friend", "name": "bob"}]
    for model in ("gpt-4o", "gpt-3.5-turbo", "anthropic/claude-sonnet-4-5", "gemini/gemini-2.5-flash"):
        assert llmrpc.token_counter(model=model, messages=msgs, client=client) == litellm.token_counter(
            model=model, messages=msgs)
        assert llmrpc.token_counter(model=model, text="hello there friend", client=client) == litellm.token_counter(
            model=model, text="hello there friend")


COMPATIBLE = {"groq": "GROQ", "mistral": "MISTRAL", "deepseek": "DEEPSEEK", "xai": "XAI", "together_ai": "TOGETHER_AI",
              "fireworks_ai": "FIREWORKS", "perplexity": "PERPLEXITY", "openrouter": "OPENROUTER",
              "hosted_vllm": "HOSTED_VLLM", "lm_studio": "LM_STUDIO"}
FN = [{"type": "function", "function": {"name": "f", "description": "d",
                                        "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def compatible() -> Iterator[tuple[Any, llmrpc.Client]]:
    from tests.support import GatewayThread, gateway_settings
    from tests.upstreams import FakeUpstream

    with FakeUpstream(default=openai.default_handler) as up:
        env = {f"{e}_API_BASE": up.url + "/v1" for e in COMPATIBLE.values()}
        env |= {f"{e}_API_KEY": "k" for e in COMPATIBLE.values()}
        with GatewayThread(gateway_settings(env)) as gw, llmrpc.Client(gw.address) as client:
            yield up, client
            close_litellm_clients()


@pytest.mark.parametrize("provider", sorted(COMPATIBLE))
def test_openai_compatible_hosts_get_the_same_body(compatible: tuple[Any, llmrpc.Client], provider: str) -> None:
    up, client = compatible
    kwargs: dict[str, Any] = {"messages": M, "temperature": 0.3, "max_tokens": 20, "user": "u-1", "tags": ["t"]}
    if provider not in ("perplexity", "fireworks_ai"):  # they lack seed / this tool_choice (both sides refuse)
        kwargs |= {"seed": 3, "tools": FN, "tool_choice": "required"}
    model = f"{provider}/m1"
    ours = client.completion(model=model, num_retries=0, **kwargs)
    ours_sent = volatile_free(up.requests[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = litellm.completion(model=model, api_base=up.url + "/v1", api_key="k", num_retries=0, **kwargs)
    theirs_sent = volatile_free(up.requests[-1])
    theirs_sent["headers"].pop("x-pplx-integration", None)  # README: LiteLLM's attribution header
    assert ours_sent == theirs_sent
    assert ours.choices[0].message.content == theirs.choices[0].message.content
    assert usage_view(ours.usage) == usage_view(theirs.usage)
