"""Helpers every adapter shares: status classification, Retry-After parsing, ids and timestamps,
JSON bodies and ``cache_control`` blocks."""

from __future__ import annotations

import email.utils
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from llmrpc.v1 import chat_pb2

from ..proto_json import loads
from .base import ErrorKind, ProviderError

__all__ = ["cache_control", "classify", "join_url", "json_object", "merge_headers", "new_completion_id", "now",
           "path_segment", "retry_after_seconds"]

# Phrases providers use for errors that deserve their own class (LiteLLM's exception_mapping_utils).
_CONTEXT_PHRASES = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "context window",
    "prompt is too long",
    "input is too long",
    "too many tokens",
    "exceeds the maximum number of tokens",
    "model_context_window_exceeded",
)
_POLICY_PHRASES = (
    "content_policy",
    "content policy",
    "content filtering",
    "content_filter",
    "responsibleaipolicyviolation",
    "safety system",
)
_QUOTA_PHRASES = ("insufficient_quota", "quota", "billing", "credit balance")

_BY_STATUS: dict[int, ErrorKind] = {
    400: ErrorKind.BAD_REQUEST,
    401: ErrorKind.AUTH,
    402: ErrorKind.QUOTA,
    403: ErrorKind.PERMISSION,
    404: ErrorKind.NOT_FOUND,
    408: ErrorKind.TIMEOUT,
    409: ErrorKind.CONFLICT,
    413: ErrorKind.TOO_LARGE,
    422: ErrorKind.UNPROCESSABLE,
    429: ErrorKind.RATE_LIMIT,
    504: ErrorKind.TIMEOUT,
    529: ErrorKind.OVERLOADED,
}


def classify(
    status: int,
    message: str,
    headers: Mapping[str, str],
    *,
    error_type: str | None = None,
    error_code: str | None = None,
    param: str | None = None,
    request_id_header: str = "x-request-id",
) -> ProviderError:
    """Turn an upstream HTTP error into a :class:`ProviderError` of the right kind."""
    kind = _kind_for(status, f"{message} {error_type or ''} {error_code or ''}".lower())
    return ProviderError(
        kind,
        message or f"upstream returned HTTP {status}",
        status=status,
        retry_after=retry_after_seconds(headers),
        error_type=error_type,
        error_code=error_code,
        param=param,
        request_id=headers.get(request_id_header),
    )


def _kind_for(status: int, text: str) -> ErrorKind:
    if status == 429 or (status >= 400 and "rate_limit" in text):
        return ErrorKind.QUOTA if any(p in text for p in _QUOTA_PHRASES) else ErrorKind.RATE_LIMIT
    if 400 <= status < 500:
        if any(p in text for p in _CONTEXT_PHRASES):
            return ErrorKind.CONTEXT_WINDOW
        if any(p in text for p in _POLICY_PHRASES):
            return ErrorKind.CONTENT_POLICY
        if "model_not_found" in text:
            return ErrorKind.NOT_FOUND
    if status >= 500 and "overloaded" in text:
        return ErrorKind.OVERLOADED
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ErrorKind.UNAVAILABLE if status >= 500 else ErrorKind.BAD_REQUEST


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds the upstream asked us to wait: ``retry-after-ms`` first, then ``retry-after``
    (seconds or an HTTP date), as the OpenAI SDK reads them. None when absent or unparseable."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        return max(email.utils.parsedate_to_datetime(raw).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def new_completion_id() -> str:
    """LiteLLM-style ``chatcmpl-<uuid4>`` for providers that send no usable id."""
    return f"chatcmpl-{uuid.uuid4()}"


def now() -> int:
    """Unix seconds, for ``created``."""
    return int(time.time())


def path_segment(value: str) -> str:
    """``value`` as exactly one percent-encoded path segment: ``/``, ``?``, ``#``, ``%`` and every other
    reserved character are encoded, so a model or deployment name can never add a segment, a query or
    a fragment. ``.`` and ``..`` (dot-segments a server may resolve) are refused outright."""
    if value in ("", ".", ".."):
        raise ValueError(f"{value!r} cannot be a URL path segment")
    return quote(value, safe="")


def join_url(base: str, *segments: str, suffix: str = "", query: Mapping[str, str] | None = None) -> str:
    """``base`` with ``segments`` appended to its path, each one :func:`path_segment`-encoded.

    ``suffix`` is a constant of the adapter's own code appended to the last segment as is (Gemini's
    ``:generateContent``), never caller data. ``query`` is appended to any query the base already has
    (a server-configured base may carry one), so a base never swallows the path built after it."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + "".join("/" + path_segment(s) for s in segments) + suffix
    extra = urlencode(query or {})
    joined = "&".join(q for q in (parts.query, extra) if q)
    return urlunsplit((parts.scheme, parts.netloc, path, joined, ""))


def merge_headers(headers: dict[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """``headers`` with the caller's ``extra`` headers replacing any of the same name whatever the
    case (HTTP names are case-insensitive: a dict keyed by spelling would send both)."""
    if not extra:
        return headers
    taken = {name.lower() for name in extra}
    merged = {k: v for k, v in headers.items() if k.lower() not in taken}
    merged.update(extra)
    return merged


def json_object(body: bytes | str, source: str = "upstream") -> dict[str, Any]:
    """An upstream body or event that must be a JSON object; anything else is PROVIDER_BAD_RESPONSE
    (``source`` names the upstream in the message)."""
    try:
        data = loads(body)
    except ValueError as exc:
        raise ProviderError(ErrorKind.BAD_RESPONSE, f"{source} sent invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProviderError(ErrorKind.BAD_RESPONSE, f"{source} sent JSON that is not an object")
    return data


def cache_control(cc: chat_pb2.CacheControl) -> dict[str, Any]:
    """A prompt-caching marker as Anthropic (and OpenRouter, passing it on) spell it."""
    out: dict[str, Any] = {"type": cc.type or "ephemeral"}
    if cc.HasField("ttl"):
        out["ttl"] = cc.ttl
    return out
