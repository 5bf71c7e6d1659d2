"""Model knowledge every caller can ask the gateway for: offline token counts (``CountTokens``) and a
model's provider, limits, prices and capabilities (``GetModelInfo``), LiteLLM's ``token_counter`` and
``get_model_info``.

* Tokens: ``bpe-openai`` ships the OpenAI BPE tables inside its wheel, so counting never downloads
  anything (tiktoken fetches its tables at run time). OpenAI models use their own encoding; every
  other model is counted with ``cl100k_base``, LiteLLM's default, so those counts are estimates.
  Messages are framed as OpenAI's chat format counts them (3 tokens per message, 1 per name, 3 to
  prime the reply), as LiteLLM does.
* Limits and prices: the offline ``genai-prices`` snapshot the gateway already prices calls with
  (context window; USD per token, per cached token, per search).
* Capabilities: :data:`_CAPABILITIES`, a small table of model-name patterns per provider kept here,
  because no dependency ships them offline. Unknown models have them unset, never guessed.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from genai_prices import data_snapshot
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb

from .params import openai_name
from .pricing import PRICE_PROVIDERS
from .proto_json import struct_to_dict
from .providers.base import ProviderAdapter
from .tokens import encoder, encoding_name

__all__ = ["count_tokens", "model_info"]

_TOKENS_PER_MESSAGE, _TOKENS_PER_NAME, _REPLY_PRIMING = 3, 1, 3

def count_tokens(req: pb.CountTokensRequest, provider: str, model: str) -> pb.CountTokensResponse:
    """Prompt tokens of ``req.text``, else of ``req.messages`` plus ``req.tools``."""
    name = encoding_name(provider, model)
    encode = encoder(name)
    if req.HasField("text"):
        total = len(encode(req.text))
    else:
        total = sum(_message_tokens(encode, msg) for msg in req.messages) + _REPLY_PRIMING
        if req.tools:
            total += len(encode(json.dumps([_tool_json(t) for t in req.tools], sort_keys=True)))
    return pb.CountTokensResponse(prompt_tokens=total, tokenizer=name)


def _message_tokens(encode: Any, msg: chat_pb2.Message) -> int:
    texts: list[str] = [msg.role]
    if msg.HasField("content"):
        texts.append(msg.content)
    texts.extend(part.text for part in msg.content_parts if part.WhichOneof("part") == "text")
    if msg.HasField("reasoning_content"):
        texts.append(msg.reasoning_content)
    for call in msg.tool_calls:
        texts += (call.function.name, call.function.arguments)
    if msg.HasField("tool_call_id"):
        texts.append(msg.tool_call_id)
    tokens = _TOKENS_PER_MESSAGE + sum(len(encode(t)) for t in texts if t)
    if msg.name:
        tokens += len(encode(msg.name)) + _TOKENS_PER_NAME
    return tokens


def _tool_json(tool: chat_pb2.Tool) -> dict[str, Any]:
    fn = tool.function
    out: dict[str, Any] = {"name": fn.name, "description": fn.description}
    if fn.HasField("parameters"):
        out["parameters"] = struct_to_dict(fn.parameters)
    return out


# --------------------------------------------------------------------------------- model info

_Flags = dict[str, bool]
_ALL = ("function_calling", "parallel_function_calling", "tool_choice", "vision", "reasoning",
        "response_schema", "prompt_caching", "system_messages", "web_search", "audio_input",
        "audio_output", "pdf_input")
_TOOLS: _Flags = {"function_calling": True, "parallel_function_calling": True, "tool_choice": True,
                  "system_messages": True}
# provider -> [(model pattern, flags)]; the first matching pattern wins. Flags not named are False for
# a matched model; an unmatched model has every flag unset.
_CAPABILITIES: dict[str, list[tuple[re.Pattern[str], _Flags]]] = {
    "openai": [
        (re.compile(r"^gpt-4o-(mini-)?audio"), {**_TOOLS, "audio_input": True, "audio_output": True}),
        (re.compile(r"^gpt-4o(-mini)?-search"), {"system_messages": True, "vision": True, "web_search": True,
                                                  "response_schema": True}),
        (re.compile(r"^o[13]-mini"), {"function_calling": True, "tool_choice": True, "reasoning": True,
                                       "response_schema": True, "prompt_caching": True, "system_messages": True}),
        (re.compile(r"^(gpt-5|o[134])"), {**_TOOLS, "vision": True, "reasoning": True, "response_schema": True,
                                          "prompt_caching": True, "pdf_input": True, "web_search": True}),
        (re.compile(r"^(gpt-4o|gpt-4\.1|chatgpt-4o)"), {**_TOOLS, "vision": True, "response_schema": True,
                                                        "prompt_caching": True, "pdf_input": True,
                                                        "web_search": True}),
        (re.compile(r"^gpt-(4|3\.5)"), dict(_TOOLS)),
    ],
    "anthropic": [
        (re.compile(r"^claude-(3-7|(opus|sonnet|haiku)-4|[a-z]+-4)"), {
            **_TOOLS, "vision": True, "reasoning": True, "response_schema": True, "prompt_caching": True,
            "pdf_input": True, "web_search": True}),
        (re.compile(r"^claude-3"), {**_TOOLS, "vision": True, "response_schema": True, "prompt_caching": True,
                                    "pdf_input": True}),
    ],
    "gemini": [
        (re.compile(r"^gemini-(2\.5|3)"), {**_TOOLS, "vision": True, "reasoning": True, "response_schema": True,
                                           "prompt_caching": True, "pdf_input": True, "web_search": True,
                                           "audio_input": True}),
        (re.compile(r"^gemini-"), {**_TOOLS, "vision": True, "response_schema": True, "pdf_input": True,
                                   "web_search": True, "audio_input": True}),
    ],
    "mock": [(re.compile(r""), {"system_messages": True})],
}


def model_info(adapter: ProviderAdapter[Any], requested: str, model: str) -> pb.ModelInfo:
    """What is known about ``model`` served by ``adapter`` (``requested`` is the caller's name)."""
    info = pb.ModelInfo(key=requested, provider=adapter.name, provider_model=model, mode="chat")
    info.supported_openai_params.extend(sorted({openai_name(p) for p in adapter.supported_params}
                                               | {"stream", "stream_options"}))
    _fill_prices(info, adapter.name, model)
    for name, value in _flags(adapter.name, model).items():
        setattr(info, f"supports_{name}", value)
    return info


def _flags(provider: str, model: str) -> _Flags:
    bare = model.rsplit("/", 1)[-1]
    for pattern, flags in _CAPABILITIES.get("openai" if provider == "azure" else provider, ()):
        if pattern.search(bare):
            return {name: flags.get(name, False) for name in _ALL}
    return {}


def _fill_prices(info: pb.ModelInfo, provider: str, model: str) -> None:
    price_id = PRICE_PROVIDERS.get(provider)
    if price_id is None:
        return
    try:
        _, found = data_snapshot.get_snapshot().find_provider_model(model, None, price_id, None)
    except LookupError:
        return
    if found.context_window:
        info.max_input_tokens = info.max_tokens = found.context_window
    prices = found.get_prices(datetime.now(tz=UTC))
    for field, key, per in (("input_cost_per_token", "input_mtok", 1e6),
                            ("output_cost_per_token", "output_mtok", 1e6),
                            ("cache_read_input_token_cost", "cache_read_mtok", 1e6),
                            ("cache_creation_input_token_cost", "cache_write_mtok", 1e6),
                            ("search_cost_per_request", "web_searches_kcount", 1e3)):
        value = _base_price(getattr(prices, key, None))
        if value is not None:
            setattr(info, field, value / per)


def _base_price(value: Any) -> float | None:
    """A flat price, or the first tier of a tiered one."""
    if isinstance(value, Decimal | int | float):
        return float(value)
    base = getattr(value, "base", None)
    return float(base) if isinstance(base, Decimal | int | float) else None

