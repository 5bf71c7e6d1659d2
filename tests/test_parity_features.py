"""LiteLLM and llmrpc side by side on tool calls, reasoning/thinking and prompt-cache tokens, for each
provider family the fakes serve: the upstream gets the same tools, callers get the same tool calls,
reasoning text, thinking blocks and usage details (streams rebuilt with ``stream_chunk_builder``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import llmrpc
import pytest

from tests.parity import Parity, litellm, parity_env
from tests.test_parity_providers import sent_view, usage_view
from tests.upstreams import Reply, anthropic, gemini, ollama, openai

M = [{"role": "user", "content": "weather in Paris?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def fams() -> Iterator[dict[str, Parity]]:
    with parity_env() as env:
        yield env


def both(p: Parity, reply: Callable[[], Reply], **kwargs: Any) -> tuple[Any, Any, Any, Any]:
    """The same scripted upstream answer, once for llmrpc and once for LiteLLM."""
    p.upstream.enqueue(reply())
    ours, ours_sent = p.llmrpc(**kwargs)
    p.upstream.enqueue(reply())
    theirs, their_sent = p.litellm(**kwargs)
    assert not isinstance(ours, Exception), ours
    assert not isinstance(theirs, Exception), theirs
    return ours, theirs, ours_sent, their_sent


TOOL_REPLIES: dict[str, Callable[[], Reply]] = {
    "openai": lambda: openai.chat_completion(None, tool_calls=[("call_1", "get_weather", '{"city": "Paris"}')]),
    "anthropic": lambda: anthropic.message(None, tool_uses=[("toolu_1", "get_weather", {"city": "Paris"})]),
    "gemini": lambda: gemini.generate_content(None, function_calls=[("get_weather", {"city": "Paris"}, None)]),
    "ollama": lambda: ollama.chat("", tool_calls=[("get_weather", {"city": "Paris"})]),
}


@pytest.mark.parametrize("family", sorted(TOOL_REPLIES))
def test_tool_calls(fams: dict[str, Parity], family: str) -> None:
    ours, theirs, ours_sent, their_sent = both(fams[family], TOOL_REPLIES[family], messages=M, tools=TOOLS,
                                               tool_choice="auto")
    assert sent_view(family, ours_sent) == sent_view(family, their_sent)
    assert ours.choices[0].finish_reason == theirs.choices[0].finish_reason
    mine, theirs_calls = ours.choices[0].message.tool_calls, theirs.choices[0].message.tool_calls
    assert [(c.type, c.function.name) for c in mine] == [(c.type, c.function.name) for c in theirs_calls]
    assert [_json(c.function.arguments) for c in mine] == [_json(c.function.arguments) for c in theirs_calls]
    # README: Ollama tool-call answers keep content None where LiteLLM passes on Ollama's "".
    assert ours.choices[0].message.content == (theirs.choices[0].message.content or None)
    assert usage_view(ours.usage) == usage_view(theirs.usage)


def _json(text: str) -> Any:
    import json

    return json.loads(text)


THINKING = "Paris is in France; check the forecast for rain."


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_thinking_and_reasoning_tokens(fams: dict[str, Parity], stream: bool) -> None:
    usage = anthropic.default_usage(output_tokens=40)

    def reply() -> Reply:
        if stream:
            return anthropic.message_stream(["It ", "rains."], thinking=[(THINKING, "sig-1")], usage=usage)
        return anthropic.message("It rains.", thinking=[(THINKING, "sig-1")], usage=usage)

    kwargs: dict[str, Any] = {"messages": M, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    if stream:
        kwargs.update(stream=True, stream_options={"include_usage": True})
    ours, theirs, ours_sent, their_sent = both(fams["anthropic"], reply, **kwargs)
    if stream:
        ours, theirs = llmrpc.stream_chunk_builder(ours), litellm.stream_chunk_builder(theirs)
    assert sent_view("anthropic", ours_sent) == sent_view("anthropic", their_sent)
    mine, their_msg = ours.choices[0].message, theirs.choices[0].message
    assert mine.content == their_msg.content == "It rains."
    assert mine.reasoning_content == their_msg.reasoning_content == THINKING
    assert [(b["thinking"], b["signature"]) for b in mine.thinking_blocks] == [
        (b["thinking"], b["signature"]) for b in their_msg.thinking_blocks]
    assert usage_view(ours.usage) == usage_view(theirs.usage)
    assert ours.usage.completion_tokens_details.reasoning_tokens > 0


REASONING_MODELS = {"openai": "openai/o3-mini"}  # LiteLLM refuses reasoning_effort on gpt-4o (README)
REASONING_REPLIES: dict[str, Callable[[], Reply]] = {
    "openai": lambda: openai.chat_completion("42", usage=openai.default_usage(reasoning_tokens=30,
                                                                             completion_tokens=40)),
    "gemini": lambda: gemini.generate_content("42", thoughts=["thinking hard"],
                                              usage=gemini.default_usage(thoughts=30)),
    "ollama": lambda: ollama.chat("42", thinking="thinking hard"),
}


@pytest.mark.parametrize("family", sorted(REASONING_REPLIES))
def test_reasoning(fams: dict[str, Parity], family: str) -> None:
    model = REASONING_MODELS.get(family, fams[family].family.model)
    ours, theirs, ours_sent, their_sent = both(fams[family], REASONING_REPLIES[family], messages=M,
                                               reasoning_effort="low", model=model)
    assert sent_view(family, ours_sent) == sent_view(family, their_sent)
    assert ours.choices[0].message.content == theirs.choices[0].message.content
    assert ours.choices[0].message.reasoning_content == getattr(theirs.choices[0].message, "reasoning_content", None)
    assert usage_view(ours.usage) == usage_view(theirs.usage)


CACHE_REPLIES: dict[str, Callable[[], Reply]] = {
    "anthropic": lambda: anthropic.message("ok", usage=anthropic.default_usage(cache_read=100, cache_write=20)),
    "openai": lambda: openai.chat_completion("ok", usage={
        **openai.default_usage(prompt_tokens=150), "prompt_tokens_details": {"cached_tokens": 100}}),
    "gemini": lambda: gemini.generate_content("ok", usage={
        **gemini.default_usage(prompt=150), "cachedContentTokenCount": 100}),
}


@pytest.mark.parametrize("family", sorted(CACHE_REPLIES))
def test_cache_tokens(fams: dict[str, Parity], family: str) -> None:
    msgs = [{"role": "system", "content": [{"type": "text", "text": "long context",
                                             "cache_control": {"type": "ephemeral"}}]}, *M]
    ours, theirs, ours_sent, their_sent = both(fams[family], CACHE_REPLIES[family], messages=msgs)
    assert sent_view(family, ours_sent) == sent_view(family, their_sent)
    mine, their_usage = usage_view(ours.usage), usage_view(theirs.usage)
    if family == "openai":  # README: cache_read_input_tokens on OpenAI-compatible usage
        assert (mine.pop("cache_read_input_tokens"), their_usage.pop("cache_read_input_tokens")) == (100, 0)
    assert mine == their_usage
    assert ours.usage.prompt_tokens_details.cached_tokens == 100


INFO_MODELS = ["gpt-4o", "gpt-4o-mini", "o3-mini", "gpt-5", "claude-sonnet-4-5", "gemini/gemini-2.5-flash"]
FLAGS = ["function_calling", "parallel_function_calling", "tool_choice", "vision", "reasoning", "response_schema",
         "prompt_caching", "system_messages", "web_search", "audio_input", "audio_output", "pdf_input"]


@pytest.mark.parametrize("model", INFO_MODELS)
def test_model_info(fams: dict[str, Parity], model: str) -> None:
    client = fams["openai"].client
    ours, theirs = llmrpc.get_model_info(model, client=client), litellm.get_model_info(model)
    assert ours["litellm_provider"] == theirs["litellm_provider"] and ours["mode"] == theirs["mode"]
    for key in ("input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost"):
        assert ours[key] == pytest.approx(theirs[key]), key
    for flag in FLAGS:  # README: LiteLLM leaves some flags unset where the gateway's table says
        if theirs.get(f"supports_{flag}") is not None:
            assert ours[f"supports_{flag}"] == theirs[f"supports_{flag}"], flag
            check = getattr(litellm, f"supports_{flag}", None)  # LiteLLM has no module-level tool_choice check
            if check is not None:
                assert getattr(llmrpc, f"supports_{flag}")(model, client=client) == check(model, None), flag
    assert llmrpc.get_llm_provider(model, client=client) == litellm.get_llm_provider(model)
    ours_cost = llmrpc.completion_cost(model=model, prompt="hello there friend", completion="hi", client=client)
    theirs_cost = litellm.completion_cost(model=model, prompt="hello there friend", completion="hi")
    assert ours_cost == pytest.approx(theirs_cost)
