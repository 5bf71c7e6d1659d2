"""``llmrpc-server keys new [--alias NAME]`` and ``llmrpc-server keys spend``."""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from datetime import UTC, datetime

from ..config import Settings
from ..proxy_config import ConfigError
from .spec import hash_key, parse_keys
from .store import SqliteLimitStore, StoreUnavailable, budget_window

__all__ = ["keys_command", "new_key"]


def new_key() -> str:
    """A fresh key: ``sk-`` (LiteLLM's prefix) and 32 random bytes, URL-safe base64."""
    return "sk-" + secrets.token_urlsafe(32)


def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "new":
        key = new_key()
        alias = args.alias or "my-key"
        print(f"key: {key}")
        print("# give the key to its caller; put only its hash in the config's keys: section")
        print(f"  - key_alias: {alias}")
        print(f"    key_hash: {hash_key(key)}")
        return 0
    if args.action == "spend":
        return _spend(settings)
    print("llmrpc-server: usage: llmrpc-server keys new [--alias NAME] | keys spend", file=sys.stderr)
    return 2


def _spend(settings: Settings) -> int:
    from . import state_path

    try:
        ring = parse_keys(settings.proxy.keys if settings.proxy is not None else ())
    except ConfigError as exc:
        print(f"llmrpc-server: bad setting: {exc}", file=sys.stderr)
        return 2
    if settings.redis_url:
        from ..shared import RedisDown, limits, link  # imported only with --redis-url

        try:
            rows = link.run_once(settings.redis_url, limits.spend_rows)
        except RedisDown as exc:
            print(f"llmrpc-server: {exc}", file=sys.stderr)
            return 1
    else:
        store = SqliteLimitStore(state_path(settings))
        try:
            rows = store.spend_rows()
        except StoreUnavailable as exc:
            print(f"llmrpc-server: {exc}", file=sys.stderr)
            return 1
        finally:
            store.close()
    keys = {k.digest: k for k in ring.keys}
    now = time.time()
    print(f"{'key_alias':<24} {'window':<34} {'requests':>9} {'spend_usd':>12} {'max_budget':>11}")
    for row in rows:
        key = keys.get(row.digest)
        alias = key.alias if key is not None else f"(unconfigured) {row.digest[:19]}"
        window = _window(row.start, row.length)
        current = key is not None and budget_window(key, now) == (row.start, row.length)
        budget = f"{key.max_budget:g}" if key is not None and key.max_budget is not None and current else "-"
        print(f"{alias:<24} {window:<34} {row.requests:>9} {row.spend:>12.6f} {budget:>11}")
    return 0


def _window(start: float, length: int) -> str:
    if length == 0:
        return "lifetime"
    begin = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{begin} +{length}s"
