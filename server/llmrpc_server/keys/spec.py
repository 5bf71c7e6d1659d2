"""The ``keys:`` section of a proxy config -> :class:`KeyRing` of :class:`VirtualKey` (LiteLLM's names).

Each entry names its secret either as ``key`` (a literal, or ``os.environ/NAME``, resolved by the
config loader) or as ``key_hash: sha256:<hex>`` so the file can live in Git. Only the SHA-256 of a
key is kept in memory: a presented key is hashed and looked up by digest, and the digest is compared
with ``hmac.compare_digest``, so no comparison's timing depends on the secret.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from ..proxy_config import ConfigError

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["FIELDS", "KeyRing", "VirtualKey", "hash_key", "parse_duration", "parse_keys"]

FIELDS = frozenset({"key", "key_hash", "key_alias", "models", "rpm_limit", "tpm_limit", "max_budget",
                    "budget_duration", "max_parallel_requests", "metadata", "expires"})
log = logging.getLogger("llmrpc_server.keys")
_HASH = re.compile(r"sha256:([0-9a-f]{64})")
_DURATION = re.compile(r"(\d+)\s*(s|m|h|d|w)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def hash_key(key: str) -> str:
    """``sha256:<hex>`` of a key, the form ``key_hash`` takes and the store's key column holds."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def parse_duration(text: str) -> int:
    """``30s``, ``5m``, ``1h``, ``1d``, ``30d``, ``1w`` -> seconds (LiteLLM's ``budget_duration`` units;
    its calendar ``mo`` is not taken: windows here are fixed lengths)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"expected a duration like 30s, 1h, 1d or 30d, got {text!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True, slots=True, eq=False)
class VirtualKey:
    """One virtual key; ``digest`` is ``sha256:<hex>``, never the key itself."""

    digest: str
    alias: str
    models: tuple[str, ...] = ()
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_budget: float | None = None
    budget_duration: int | None = None  # seconds; None: the budget is for the key's lifetime
    max_parallel_requests: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    expires: float | None = None  # unix seconds
    # Whether admission needs the store (any counted limit); spend is tracked for every key.
    limited: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # computed once: it is read on every call under the key
        object.__setattr__(self, "limited", any(v is not None for v in (
            self.rpm_limit, self.tpm_limit, self.max_budget, self.max_parallel_requests)))

    def allows(self, model: str) -> bool:
        """``models`` is an allowlist (empty: every model); entries may be patterns like ``openai/*``."""
        if not self.models:
            return True
        return any(model == pattern or ("*" in pattern and fnmatch.fnmatchcase(model, pattern))
                   for pattern in self.models)

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


class KeyRing:
    """The configured keys, found by the digest of a presented key. One object for the server's life:
    a SIGHUP reload swaps its contents (:meth:`reconfigure`), so every holder sees the new keys."""

    def __init__(self, keys: Sequence[VirtualKey]) -> None:
        self.keys = tuple(keys)
        self._by_digest = {k.digest: k for k in keys}

    def reconfigure(self, settings: Settings, table: object = None) -> None:
        """Take the reloaded config's keys; a bad ``keys:`` section keeps the running ones (logged).
        Counters and spend are keyed by the key's hash, so an edited key keeps what it used."""
        try:
            fresh = parse_keys(settings.proxy.keys if settings.proxy is not None else ())
        except ConfigError as exc:
            log.error("SIGHUP: keys not reloaded, keeping the running ones: %s", exc)
            return
        self.keys, self._by_digest = fresh.keys, fresh._by_digest  # no await between: atomic for the loop

    def __bool__(self) -> bool:
        return bool(self.keys)

    def find(self, presented: str) -> VirtualKey | None:
        """The key whose hash matches ``presented`` (looked up by digest, confirmed in constant time)."""
        digest = hash_key(presented)
        key = self._by_digest.get(digest)
        if key is not None and hmac.compare_digest(key.digest, digest):  # both ASCII
            return key
        return None


def parse_keys(raw: Sequence[Mapping[str, Any]]) -> KeyRing:
    """Validate the raw ``keys:`` list; a bad entry is a :class:`ConfigError` like ``keys[1].rpm_limit``."""
    keys: list[VirtualKey] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(raw):
        path = f"keys[{index}]"
        key = _parse_entry(entry, path, index)
        if key.digest in seen:
            raise ConfigError(path, f"the same key as keys[{seen[key.digest]}]")
        if key.alias in {k.alias for k in keys}:
            raise ConfigError(f"{path}.key_alias", f"duplicate key_alias {key.alias!r}")
        seen[key.digest] = index
        keys.append(key)
    return KeyRing(keys)


def _parse_entry(entry: Any, path: str, index: int) -> VirtualKey:
    if not isinstance(entry, Mapping):
        raise ConfigError(path, "expected a mapping")
    unknown = sorted(set(entry) - FIELDS)
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}", f"unknown key field (known: {', '.join(sorted(FIELDS))})")
    digest = _digest(entry, path)
    alias = _string(entry, "key_alias", path) or f"key-{index}"
    duration = _string(entry, "budget_duration", path)
    try:
        seconds = parse_duration(duration) if duration else None
    except ValueError as exc:
        raise ConfigError(f"{path}.budget_duration", str(exc)) from None
    metadata = entry.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"{path}.metadata", "expected a mapping")
    return VirtualKey(
        digest=digest, alias=alias, models=_models(entry, path),
        rpm_limit=_count(entry, "rpm_limit", path), tpm_limit=_count(entry, "tpm_limit", path),
        max_budget=_budget(entry, path), budget_duration=seconds,
        max_parallel_requests=_count(entry, "max_parallel_requests", path, minimum=1),
        metadata=dict(metadata), expires=_expires(entry, path),
    )


def _digest(entry: Mapping[str, Any], path: str) -> str:
    key, given = entry.get("key"), entry.get("key_hash")
    if (key is None) == (given is None):
        raise ConfigError(path, "set exactly one of key or key_hash")
    if key is not None:
        if not isinstance(key, str) or len(key.strip()) < 8:
            raise ConfigError(f"{path}.key", "expected a string of at least 8 characters")
        return hash_key(key.strip())
    if not isinstance(given, str) or _HASH.fullmatch(given.strip().lower()) is None:
        raise ConfigError(f"{path}.key_hash", "expected sha256:<64 hex digits> (see `llmrpc-server keys new`)")
    return given.strip().lower()


def _string(entry: Mapping[str, Any], name: str, path: str) -> str | None:
    value = entry.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}.{name}", "expected a non-empty string")
    return value.strip()


def _models(entry: Mapping[str, Any], path: str) -> tuple[str, ...]:
    models = entry.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, str) and m.strip() for m in models):
        raise ConfigError(f"{path}.models", "expected a list of model names")
    return tuple(m.strip() for m in models)


def _count(entry: Mapping[str, Any], name: str, path: str, *, minimum: int = 0) -> int | None:
    value = entry.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{path}.{name}", f"expected an integer >= {minimum}")
    return value


def _budget(entry: Mapping[str, Any], path: str) -> float | None:
    value = entry.get("max_budget")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{path}.max_budget", "expected a number of USD >= 0")
    return float(value)


def _expires(entry: Mapping[str, Any], path: str) -> float | None:
    value = entry.get("expires")
    if value is None:
        return None
    if isinstance(value, datetime):  # YAML reads unquoted timestamps itself
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConfigError(f"{path}.expires", "expected an ISO date or date-time, like 2026-12-31T23:59:00Z") \
                from None
    else:
        raise ConfigError(f"{path}.expires", "expected an ISO date or date-time")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # a bare date/time is UTC, as in LiteLLM's key tables
    return moment.timestamp()
