"""Where credentials may go: the server's provider keys only to the base URL the server configured
for that provider, and which request headers count as credentials.

Why compare bases at all: a request may name its own ``api_base``. If the server's key went with
it, any caller could make the gateway hand ``OPENAI_API_KEY`` to a host of its choosing. So a
caller-named base that is not the server's own gets only the caller's ``api_key`` (or, for a
provider that needs no key, no credentials at all). "The server's own" is compared on the
normalized URL: scheme and host case-folded, the scheme's default port made explicit, trailing
slashes dropped; userinfo and query are not compared because a caller-named base may have neither
(``validation``), and the server's configured string is used for the call when they match.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["CREDENTIAL_HEADERS", "caller_credentials", "normalized_base", "same_base"]

# Headers the adapters fill with a provider key: OpenAI-style Bearer, Anthropic, Azure, Gemini.
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalized_base(url: str) -> tuple[str, str, int | None, str] | None:
    """``(scheme, host, port, path)`` of a base URL, or None when it does not parse."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not scheme or not host:
        return None
    return scheme, host, port or _DEFAULT_PORTS.get(scheme), parts.path.rstrip("/")


def same_base(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` name the same origin and path (see the module docstring)."""
    left = normalized_base(a)
    return left is not None and left == normalized_base(b)


def caller_credentials(api_key: str | None, headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The credentials a caller brought: its ``api_key`` and any credential header, in a stable order
    (the cache scopes answers by them)."""
    found = [("api_key", api_key)] if api_key else []
    found += sorted((k.lower(), v) for k, v in headers.items() if k.lower() in CREDENTIAL_HEADERS)
    return found
