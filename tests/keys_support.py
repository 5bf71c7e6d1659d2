"""Shared by the virtual-key tests: a gateway whose proxy config has a ``keys:`` section."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import llmrpc
from llmrpc_server.proxy_config import parse_proxy_config

from tests.support import GatewayThread, gateway_settings

__all__ = ["MESSAGES", "client_for", "keyed_gateway"]

MESSAGES = [{"role": "user", "content": "hi"}]


@contextmanager
def keyed_gateway(keys: Sequence[Mapping[str, Any]], state_path: str, env: Mapping[str, str] | None = None,
                  **overrides: Any) -> Iterator[GatewayThread]:
    """An in-process gateway with these ``keys:`` entries and its counters in ``state_path``."""
    proxy = parse_proxy_config({"keys": list(keys)}, dict(env or {}))
    settings = gateway_settings(env, proxy=proxy, state_path=state_path, **overrides)
    with GatewayThread(settings) as gateway:
        yield gateway


def client_for(gateway: GatewayThread, key: str | None, header: str = "authorization") -> llmrpc.Client:
    """A thin client presenting ``key`` (as a bearer token, or in ``x-api-key``)."""
    if key is None:
        return llmrpc.Client(gateway.address)
    value = f"Bearer {key}" if header == "authorization" else key
    return llmrpc.Client(gateway.address, metadata=[(header, value)])
