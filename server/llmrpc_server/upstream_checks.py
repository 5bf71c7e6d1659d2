"""Validation of the request fields that shape the upstream HTTP request itself: ``api_base``,
``api_key``, ``api_version``, ``deployment_id`` and ``extra_headers``.

Why so strict: these fields end up in a URL or a header line the gateway writes. A base URL with a
query or ``user:password@`` would change what the adapters' paths mean or carry credentials; a
header named ``Host`` or ``Transfer-Encoding`` would change the framing of the request; a CR or LF
in a value would start a new header. Each rule names the field (``extra_headers["Host"]``) and never
echoes a header value or key back (they are often credentials).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from llmrpc.v1 import completion_service_pb2 as pb

from .credentials import CREDENTIAL_HEADERS

__all__ = [
    "MAX_API_BASE", "MAX_HEADERS", "MAX_HEADERS_BYTES", "REFUSED_HEADERS", "api_base_problem",
    "upstream_violations",
]

MAX_API_BASE = 2048
MAX_API_KEY = 4096
MAX_HEADERS = 64
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 8192
MAX_HEADERS_BYTES = 65536
# Hop-by-hop (RFC 9110 §7.6.1) and framing headers: the gateway's HTTP client owns them.
REFUSED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "expect", "te", "trailer",
    "upgrade", "http2-settings",
})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 §5.6.2
_FIELD_VALUE = re.compile(r"^(?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?$")  # §5.5, ASCII only
_KEY = re.compile(r"^[\x21-\x7e]+$")
_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?$")
_PATH = re.compile(r"^(?:/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})*)*$")  # RFC 3986 path-abempty

Violation = tuple[str, str]


def upstream_violations(req: pb.CompleteRequest, present: Mapping[str, Any]) -> Iterator[Violation]:
    """Violations of the upstream-shaping fields ``present`` (``{field name: value}`` of ``req``)."""
    if "api_base" in present and (problem := api_base_problem(req.api_base)):
        yield "api_base", problem
    # "" stays allowed and means no key (LiteLLM treats a falsy key as unset)
    if "api_key" in present and req.api_key and not (len(req.api_key) <= MAX_API_KEY and _KEY.match(req.api_key)):
        yield "api_key", f"must be at most {MAX_API_KEY} visible ASCII characters (no spaces or line breaks)"
    if "api_version" in present and not _VERSION.match(req.api_version):
        yield "api_version", "must be 1-64 letters, digits, '.', '_' or '-'"
    if "deployment_id" in present and not 0 < len(req.deployment_id) <= 256:
        yield "deployment_id", "must be 1-256 characters"
    if "extra_headers" in present:
        yield from _headers(req.extra_headers, has_key=bool(req.api_key))


def api_base_problem(url: str) -> str | None:
    """Why ``url`` is not a base URL (``http``/``https``, a host, optional port and path, nothing
    else), or None when it is one."""
    if len(url) > MAX_API_BASE:
        return f"at most {MAX_API_BASE} characters"
    if not url or not _KEY.match(url) or "\\" in url:
        return "must be an http:// or https:// URL without spaces, control or non-ASCII characters"
    if "?" in url or "#" in url:
        return "must be a base URL: no query string or fragment (the gateway appends the path)"
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if "@" in parts.netloc:
        return "must not carry credentials (user:password@); pass api_key"
    if not parts.hostname or not _HOST.match(parts.netloc):
        return "must name a host (letters, digits, '.', '-', '_' or a bracketed IPv6 address)"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 and parts.netloc.rpartition("]")[2].count(":"):
        return "the port must be 1-65535"
    if not _PATH.match(parts.path) or any(s in (".", "..") for s in parts.path.split("/")):
        return "the path may hold only URL path characters (percent-encode others) and no '.' or '..' segments"
    return None


def _headers(headers: Mapping[str, str], *, has_key: bool) -> Iterator[Violation]:
    if len(headers) > MAX_HEADERS:
        yield "extra_headers", f"at most {MAX_HEADERS} headers"
        return
    if sum(len(k) + len(v) for k, v in headers.items()) > MAX_HEADERS_BYTES:
        yield "extra_headers", f"at most {MAX_HEADERS_BYTES} characters of names and values in all"
    seen: dict[str, str] = {}
    for name, value in headers.items():
        path = f"extra_headers[{json.dumps(name)}]"
        lower = name.lower()
        if not (len(name) <= MAX_HEADER_NAME and _TOKEN.match(name)):
            yield path, f"a header name must be an HTTP token (RFC 9110) of at most {MAX_HEADER_NAME} characters"
            continue
        if lower in seen:
            yield path, f"given twice (also as {seen[lower]!r}); header names are case-insensitive"
        seen[lower] = name
        if lower in REFUSED_HEADERS or lower.startswith("proxy-"):
            yield path, "hop-by-hop, framing and proxy headers are set by the gateway's HTTP client"
        elif lower in CREDENTIAL_HEADERS and not has_key:
            yield path, ("a credential header needs your own api_key in the same request: without one the "
                         "gateway authenticates with the server's key")
        if not (len(value) <= MAX_HEADER_VALUE and _FIELD_VALUE.match(value)):
            yield path, (f"the value must be at most {MAX_HEADER_VALUE} visible ASCII characters, spaces or "
                         "tabs inside (no line breaks, NUL or leading/trailing whitespace)")
