"""Remote images made inline for providers that take only inline data (Ollama), as LiteLLM does.

Why not in the adapter: adapters are pure, and this is a download, so the executor does the HTTP
and this module the policy. Why a policy: a gateway that fetches URLs its callers name is a
server-side request forgery vector (cloud metadata at 169.254.169.254, admin ports on localhost,
the private network). So by default (``--fetch-media public``) a URL is fetched only if its host
resolves to public addresses only, checked on every redirect when the connection is made: the
executor resolves the name, checks every address and connects only to the addresses it checked, so a
DNS answer that changes in between (rebinding) cannot slip through. ``all`` lifts that (local models
and images, trusted callers) and ``off`` refuses remote URLs.

Every failure is the caller's to fix: INVALID_ARGUMENT naming the content part, never an upstream
error, and never a reason to try fallbacks.
"""

from __future__ import annotations

import base64
import mimetypes
from typing import Any
from urllib.parse import urljoin, urlsplit

from llmrpc.v1 import completion_service_pb2 as pb

from .egress import AddressCheck, EgressRefused
from .errors import ServiceError, invalid_argument
from .executor import Executor
from .providers.base import ProviderAdapter, ProviderError
from .retry import Deadline

__all__ = ["MediaInliner"]

MAX_REDIRECTS = 5
FETCH_TIMEOUT = 30.0  # seconds for one download, within the call's own deadline
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class MediaInliner:
    """Turns the http(s) image URLs of a request into base64 data URLs, for adapters that say
    ``inline_media = True``."""

    def __init__(self, executor: Executor, mode: str, max_bytes: int) -> None:
        self._executor = executor
        self._mode = mode
        self._max_bytes = max_bytes

    async def inline(self, adapter: ProviderAdapter[Any], req: pb.CompleteRequest, deadline: Deadline,
                     ) -> pb.CompleteRequest:
        """``req`` itself when there is nothing to fetch, else a copy with data URLs."""
        if self._mode == "off" or not adapter.inline_media:
            return req
        remote = [(i, j) for i, msg in enumerate(req.messages) for j, part in enumerate(msg.content_parts)
                  if part.WhichOneof("part") == "image_url"
                  and part.image_url.url.startswith(("http://", "https://"))]
        if not remote:
            return req
        out = pb.CompleteRequest()
        out.CopyFrom(req)
        for i, j in remote:
            image = out.messages[i].content_parts[j].image_url
            path = f"messages[{i}].content_parts[{j}].image_url.url"
            image.url = await self._data_url(image.url, path, deadline)
        return out

    async def _data_url(self, url: str, path: str, deadline: Deadline) -> str:
        check = None if self._mode == "all" else \
            AddressCheck(path, public_only=True, lift_hint="--fetch-media all lifts that")
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _unusable(path, f"{url} is not an http(s) URL")
            try:
                reply = await self._executor.fetch(url, timeout=min(FETCH_TIMEOUT, deadline.remaining()),
                                                   max_bytes=self._max_bytes, address_check=check)
            except EgressRefused as refused:
                raise _unusable(path, f"{url}: {refused.message}") from None
            except ProviderError as err:
                raise _unusable(path, f"could not download {url}: {err.message}") from err
            location = reply.headers.get("location")
            if reply.status in _REDIRECTS and location:
                url = urljoin(url, location)
                continue
            if reply.status != 200:
                raise _unusable(path, f"downloading {url} answered HTTP {reply.status}")
            return f"data:{_media_type(url, reply.headers.get('content-type'))};base64," \
                   f"{base64.b64encode(reply.body).decode()}"
        raise _unusable(path, f"more than {MAX_REDIRECTS} redirects from {url}")


def _media_type(url: str, content_type: str | None) -> str:
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared and declared != "application/octet-stream":
        return declared
    return mimetypes.guess_type(urlsplit(url).path)[0] or declared or "application/octet-stream"


def _unusable(path: str, why: str) -> ServiceError:
    return invalid_argument([(path, why)])
