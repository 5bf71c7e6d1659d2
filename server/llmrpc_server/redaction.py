"""Keeping credentials and URL secrets out of what the gateway shows: error messages (to the caller,
spans, logs, callbacks), response metadata and span attributes.

Two tools. :func:`origin` reduces a base URL to ``scheme://host[:port]``: a configured
``OPENAI_API_BASE`` may carry ``user:password@``, a secret path or a signed query, and only the
host is anyone's business. :func:`scrub_error` rewrites an upstream error in place before it
leaves the attempt that produced it: every credential the gateway sent on that request (the header
values that carry keys, the URL's userinfo and query values) is replaced by ``[redacted]``, then
generic shapes (``sk-...``, ``Bearer ...``, Google ``AIza...`` keys, ``key=...``) are too. An
upstream that echoes the key it rejected ("Incorrect API key provided: sk-...") therefore never
puts it in a span's exception event, a log line or a caller's error - the server's key above all.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

from .credentials import CREDENTIAL_HEADERS
from .errors import ServiceError
from .providers.base import HttpCall, ProviderError

__all__ = ["REDACTED", "call_secrets", "origin", "redact", "redact_chain", "scrub_error"]

REDACTED = "[redacted]"
_MIN_SECRET = 4  # shorter values would blank ordinary words out of messages
_SECRET_HEADERS = CREDENTIAL_HEADERS | {"proxy-authorization", "cookie"}
_SECRET_NAME = re.compile(r"key|token|secret|auth|password|signature|sig$", re.IGNORECASE)
_HARMLESS_QUERY = frozenset({"api-version", "alt"})  # set by the adapters, never secret
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bsk-[A-Za-z0-9_*.-]{6,}"), REDACTED),  # OpenAI, Anthropic, OpenRouter... (masked too)
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), REDACTED),  # Google API keys
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{6,}"), rf"\1\2{REDACTED}"),
    # query parameters that carry credentials: key=, api_key=, X-Amz-Signature=, sig=, access_token=...
    (re.compile(r"(?i)([?&][A-Za-z0-9_.-]*(?:key|token|sig|signature|secret|password|credential)=)[^&\s\"'<>]+"),
     rf"\1{REDACTED}"),
    (re.compile(r"(?i)\b(https?://)[^/\s@\"'<>]*@"), rf"\1{REDACTED}@"),  # userinfo in any URL
)


@functools.lru_cache(maxsize=256)  # a handful of bases, on the path of every answer
def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: no userinfo, path, query or fragment ("" if unparseable)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    host = parts.hostname or ""
    if not parts.scheme or not host:
        return ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def call_secrets(call: HttpCall) -> list[str]:
    """Every credential ``call`` carries: values of credential-bearing headers (and the token of an
    ``Authorization: <scheme> <token>``), the URL's userinfo and its query values."""
    found: list[str] = []
    for name, value in call.headers.items():
        lower = name.lower()
        if lower in _SECRET_HEADERS or _SECRET_NAME.search(lower):
            found.append(value)
            found.extend(value.split()[1:2])
    try:
        parts = urlsplit(call.url)
        found.extend(s for s in (parts.username, parts.password) if s)
        found.extend(v for k, v in parse_qsl(parts.query) if k.lower() not in _HARMLESS_QUERY)
    except ValueError:
        pass
    return found + [unquote(s) for s in found if "%" in s]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each of ``secrets`` and every generic credential shape replaced by ``[redacted]``."""
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_error(err: ProviderError, call: HttpCall) -> None:
    """Redact ``err`` in place (message, ``args``, and the upstream's type/code/param strings) with
    the secrets of the ``call`` that produced it; the full URL becomes its origin."""
    secrets = call_secrets(call)
    url = call.url
    bare = url.split("?", 1)[0]

    def clean(text: str) -> str:
        for full in (url, bare):  # e.g. a transport error naming the URL it could not reach
            if len(full) > len(origin(full)):
                text = text.replace(full, origin(full))
        return redact(text, secrets)

    err.message = clean(err.message)
    err.args = (err.message, *err.args[1:])
    err.error_type = clean(err.error_type) if err.error_type else err.error_type
    err.error_code = clean(err.error_code) if err.error_code else err.error_code
    err.param = clean(err.param) if err.param else err.param


def redact_chain(exc: BaseException) -> None:
    """Generic redaction of a failing call's error and every error it was raised from or during, in
    place, as the last step before the status is sent: the OpenTelemetry server interceptor records
    the final exception with its stack trace, which prints the whole chain. Catches what
    :func:`scrub_error` cannot know, e.g. a signed media URL a caller sent that an error names."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        if isinstance(current, ServiceError):
            current.message = redact(current.message)
        elif isinstance(current, ProviderError):
            current.message = redact(current.message)
            current.args = (current.message, *current.args[1:])
        current = current.__cause__ or current.__context__
