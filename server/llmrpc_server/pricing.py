"""Cost of a call in USD from the offline price table of ``genai-prices``.

Why a module of its own: ``genai_prices.calc_price`` is general (tiers, audio, per-request fees,
dated price changes) and costs ~0.2 ms per call, a fifth of the gateway's CPU budget per unary call.
Most models are priced per token only, so their resolved price is cached per (provider, model) and
applied with four multiplications; anything else (tiered prices, unknown price keys) goes through
``calc_price`` itself. Unknown providers and models have no cost (``None``), never 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from genai_prices import Usage, calc_price, data_snapshot
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import usage_pb2

from .providers import priced_as_requested

__all__ = ["PRICE_PROVIDERS", "call_cost", "cost_usd", "load_price_table"]

# LiteLLM provider prefixes -> genai-prices provider ids, for the gateway's own providers only (a
# prefix no adapter serves never routes). Providers not listed (local servers, self-hosted
# OpenAI-compatible endpoints) have no public price: no cost.
PRICE_PROVIDERS: dict[str, str] = {
    "openai": "openai", "azure": "azure", "anthropic": "anthropic", "gemini": "google",
    "groq": "groq", "mistral": "mistral", "deepseek": "deepseek", "xai": "x-ai",
    "together_ai": "together", "fireworks_ai": "fireworks", "perplexity": "perplexity",
    "openrouter": "openrouter",
}
_TOKEN_KEYS = frozenset({"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"})
_FAST_KEYS = _TOKEN_KEYS | {"web_searches_kcount"}
# Priced units the gateway never reports (count 0): harmless for the fast path.
_UNREPORTED_KEYS = frozenset({"storage_searches_kcount", "cache_write_1h_mtok"})
_TTL = 3600.0  # prices can change on a date: re-resolve hourly
_MAX_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class _TokenPrice:
    """USD per token (not per million), and per web search, of a model priced by these units only."""

    input: float
    output: float
    cache_read: float
    cache_write: float
    web_search: float


_Entry = tuple[float, "_TokenPrice | bool | None"]  # (resolved at, price | None=unknown | True=slow path)
_resolved: dict[tuple[str | None, str], _Entry] = {}


def load_price_table() -> None:
    """Load the bundled price table now (~0.4 s) rather than inside the first priced call."""
    data_snapshot.get_snapshot()


def cost_usd(provider: str | None, model: str, usage: usage_pb2.Usage) -> float | None:
    """The price of ``usage`` on ``model`` (genai-prices provider id, ``None`` to infer it)."""
    price = _price(provider, model)
    return None if price is None else _apply(price, provider, model, usage)


def call_cost(meta: pb.ResponseMetadata, model: str, usage: usage_pb2.Usage) -> float | None:
    """Cost of a response: what the provider billed, when it says (OpenRouter's ``usage.cost``), else
    its price for the model that answered (the response's model name, else the name sent upstream).
    A provider that is ``priced_as_requested`` (the offline mock, so cost tracking can be tested
    without a provider) is priced as the provider the requested model names."""
    if usage.HasField("cost"):
        return usage.cost
    if meta.provider in priced_as_requested():
        requested = meta.attempt_log[-1].model if meta.attempt_log else ""
        prefix, sep, _ = requested.partition("/")
        if prefix == meta.provider:
            return None
        price_id = PRICE_PROVIDERS.get(prefix) if sep else None  # None: genai-prices infers it
    elif (price_id := PRICE_PROVIDERS.get(meta.provider)) is None:
        return None
    price = _price(price_id, model) if model else None
    if price is None and meta.provider_model and meta.provider_model != model:
        model = meta.provider_model
        price = _price(price_id, model)
    return None if price is None else _apply(price, price_id, model, usage)


def _price(provider: str | None, model: str) -> _TokenPrice | bool | None:
    now = time.monotonic()
    key = (provider, model)
    entry = _resolved.get(key)
    if entry is None or now - entry[0] > _TTL:
        if len(_resolved) >= _MAX_ENTRIES:
            _resolved.clear()
        entry = _resolved[key] = (now, _resolve(provider, model))
    return entry[1]


def _apply(price: _TokenPrice | bool, provider: str | None, model: str, usage: usage_pb2.Usage) -> float | None:
    reads, writes = _cache_tokens(usage)
    if not isinstance(price, _TokenPrice):
        return _slow(provider, model, usage, reads, writes)
    uncached = max(usage.prompt_tokens - reads - writes, 0)
    return (uncached * price.input + reads * price.cache_read + writes * price.cache_write
            + usage.completion_tokens * price.output + _searches(usage) * price.web_search)


def _searches(usage: usage_pb2.Usage) -> int:
    return usage.server_tool_use.web_search_requests if usage.HasField("server_tool_use") else 0


def _cache_tokens(usage: usage_pb2.Usage) -> tuple[int, int]:
    reads, writes = usage.cache_read_input_tokens, usage.cache_creation_input_tokens
    if usage.HasField("prompt_tokens_details"):
        details = usage.prompt_tokens_details
        reads, writes = reads or details.cached_tokens, writes or details.cache_write_tokens
    return reads, writes


def _resolve(provider: str | None, model: str) -> _TokenPrice | bool | None:
    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    prices = {k: v for k, v in info.get_prices(datetime.now(tz=UTC)).__dict__.items()
              if v is not None and not k.startswith("_")}
    keys = set(prices) - _UNREPORTED_KEYS
    if not keys <= _FAST_KEYS or "input_mtok" not in keys or not all(
            isinstance(prices[k], Decimal) for k in keys):
        return True
    per_token = {k: float(v) / 1e6 for k, v in prices.items() if k in _TOKEN_KEYS}
    return _TokenPrice(
        input=per_token["input_mtok"], output=per_token.get("output_mtok", 0.0),
        cache_read=per_token.get("cache_read_mtok", per_token["input_mtok"]),
        cache_write=per_token.get("cache_write_mtok", per_token["input_mtok"]),
        web_search=float(prices.get("web_searches_kcount", 0)) / 1e3,
    )


def _slow(provider: str | None, model: str, usage: usage_pb2.Usage, reads: int, writes: int) -> float | None:
    counts = {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}
    if reads:
        counts["cache_read_tokens"] = reads
    if writes:
        counts["cache_write_tokens"] = writes
    if searches := _searches(usage):
        counts["web_searches"] = searches
    try:
        return float(calc_price(Usage(**counts), model, provider_id=provider).total_price)
    except (LookupError, ValueError):
        return None
