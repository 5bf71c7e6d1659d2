"""LiteLLM's module-level settings on ``llmrpc``: honoured, or refused with a warning, never ignored.

Honoured (:data:`IMPLEMENTED`): ``cache`` (see ``llmrpc.caching``), the callback lists, ``set_verbose``,
and ``drop_params``, ``num_retries``, ``api_base``, ``api_key``, ``api_version`` and ``request_timeout``,
which become the defaults of every call that does not pass its own. Assigning any other LiteLLM
setting (``litellm.modify_params = True``) warns once, naming it, because it would change nothing here.

The package module becomes a :class:`SettingsModule` (PEP 562 has ``__getattr__`` but no
``__setattr__``), so assignments like ``llmrpc.set_verbose = True`` can be seen as they happen.
"""

from __future__ import annotations

import logging
import os
import sys
import types
import warnings
from collections.abc import Mapping
from typing import Any

from ._litellm_settings import LITELLM_SETTINGS
from ._provider_keys import apply_local_key, local_keys_enabled
from .caching.caching import apply_cache

__all__ = ["IMPLEMENTED", "SettingsModule", "call_params", "install", "normalize_timeout", "turn_on_debug"]

IMPLEMENTED = frozenset(
    {
        "api_base", "api_key", "api_version", "cache", "callbacks", "drop_params", "failure_callback",
        "input_callback", "num_retries", "request_timeout", "set_verbose", "success_callback",
    }
)  # fmt: skip
# Call defaults taken from the module, only once the user assigned them (the gateway has its own).
_CALL_DEFAULTS = ("drop_params", "num_retries", "api_base", "api_key", "api_version")
_LITELLM_READ_TIMEOUT = 600.0  # LiteLLM's stand-in when an httpx.Timeout has no read timeout

log = logging.getLogger("llmrpc")
_assigned: set[str] = set()
_warned: set[str] = set()
_debug_handler: logging.Handler | None = None


class SettingsModule(types.ModuleType):
    """The ``llmrpc`` module: sees assignments to LiteLLM's settings."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in LITELLM_SETTINGS and not isinstance(value, types.ModuleType):
            _assigned.add(name)
            if name not in IMPLEMENTED:
                _warn_once(name)
        super().__setattr__(name, value)
        if name == "set_verbose":
            _set_debug(bool(value))

    def __getattr__(self, name: str) -> Any:
        if name in LITELLM_SETTINGS:
            raise AttributeError(
                f"module 'llmrpc' has no attribute {name!r}: llmrpc does not implement LiteLLM's "
                f"litellm.{name} (see 'Differences from LiteLLM' in the README)"
            )
        raise AttributeError(f"module 'llmrpc' has no attribute {name!r}")


def install(module_name: str) -> None:
    """Make ``sys.modules[module_name]`` a :class:`SettingsModule`."""
    sys.modules[module_name].__class__ = SettingsModule


def _warn_once(name: str) -> None:
    if name in _warned:
        return
    _warned.add(name)
    warnings.warn(
        f"llmrpc does not implement LiteLLM's module setting litellm.{name}; assigning llmrpc.{name} "
        "changes nothing (see 'Differences from LiteLLM' in the README)",
        UserWarning,
        stacklevel=3,
    )


def _set_debug(on: bool) -> None:
    """``set_verbose`` / ``_turn_on_debug()``: the ``llmrpc`` logger at DEBUG, printed to stderr."""
    global _debug_handler
    if on and _debug_handler is None:
        _debug_handler = logging.StreamHandler(sys.stderr)
        _debug_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(_debug_handler)
        log.setLevel(logging.DEBUG)
    elif not on and _debug_handler is not None:
        log.removeHandler(_debug_handler)
        log.setLevel(logging.NOTSET)
        _debug_handler = None


def turn_on_debug() -> None:
    """LiteLLM's ``litellm._turn_on_debug()``: log every call's arguments (no keys) and answer."""
    _set_debug(True)


def normalize_timeout(value: Any) -> float | None:
    """``timeout`` as LiteLLM takes it: a number, a numeric string, or an ``httpx.Timeout``.

    An ``httpx.Timeout`` counts by its read timeout (LiteLLM's rule for providers, with 600 s when it
    has none); the gateway bounds the whole call with it.
    """
    if value is None:
        return None
    if all(hasattr(value, attr) for attr in ("connect", "read", "write", "pool")):  # httpx(2).Timeout
        read = value.read
        return float(read) if read is not None else _LITELLM_READ_TIMEOUT
    if isinstance(value, str):
        return float(value.strip())
    return float(value)


def call_params(params: Mapping[str, Any], call_type: str) -> dict[str, Any]:
    """A call's arguments with the module's settings applied (what the gateway is sent)."""
    package = sys.modules["llmrpc"]
    out = dict(params)
    alias = out.pop("request_timeout", None)  # LiteLLM's other spelling of timeout
    if out.get("timeout") is None:
        out["timeout"] = alias
    if out.get("timeout") is None and "request_timeout" in _assigned:
        out["timeout"] = getattr(package, "request_timeout", None)
    out["timeout"] = _timeout_or_raise(out.get("timeout"))
    for name in _CALL_DEFAULTS:
        value = getattr(package, name, None)
        if name in _assigned and value is not None and out.get(name) is None:
            if name == "api_base" and out.get("base_url") is not None:
                continue
            out[name] = value
    apply_cache(out, getattr(package, "cache", None), call_type)
    if local_keys_enabled(getattr(package, "send_local_provider_keys", None)):
        apply_local_key(out, os.environ)
    return out


def _timeout_or_raise(value: Any) -> Any:
    try:
        return normalize_timeout(value)
    except (TypeError, ValueError):
        return value  # not a number: the request builder names the parameter in a BadRequestError
