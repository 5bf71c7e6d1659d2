"""Azure OpenAI (``azure/<deployment>``): OpenAI's wire format behind a deployment URL, an
``api-version`` query and an ``api-key`` header."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmrpc.v1 import completion_service_pb2 as pb

from ..proto_json import loads
from .base import ErrorKind, ProviderAdapter, ProviderError, StreamState, Target
from .common import join_url, merge_headers
from .openai import OPENAI_PARAMS, OpenAIAdapter, OpenAISpec, OpenAIStream, openai_error

__all__ = ["AZURE", "AZURE_DEFAULT_API_VERSION", "AzureAdapter", "adapters"]

# The newest GA data-plane version of the classic deployments API when this was written; the
# request's ``api_version`` or $AZURE_API_VERSION (read by the router) win over it.
AZURE_DEFAULT_API_VERSION = "2024-10-21"

AZURE = OpenAISpec(
    name="azure",
    default_base="",
    env_keys=("AZURE_OPENAI_API_KEY", "AZURE_API_KEY"),
    env_bases=("AZURE_API_BASE", "AZURE_OPENAI_ENDPOINT"),
    supported_params=OPENAI_PARAMS,
)


class AzureAdapter(OpenAIAdapter):
    """``POST {base}/openai/deployments/{deployment}/chat/completions?api-version=V`` with ``api-key``."""

    def url(self, target: Target) -> str:
        version = target.api_version or AZURE_DEFAULT_API_VERSION
        return join_url(target.api_base, "openai", "deployments", target.model, "chat", "completions",
                        query={"api-version": version})

    def headers(self, req: pb.CompleteRequest, target: Target) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if target.api_key:
            headers["api-key"] = target.api_key
        return merge_headers(headers, req.extra_headers)

    def adjust_chunk(
        self, chunk: pb.StreamCompleteResponse, data: dict[str, Any], state: StreamState[OpenAIStream]
    ) -> pb.StreamCompleteResponse | None:
        """Azure opens streams with a ``choices:[]`` chunk holding only ``prompt_filter_results``."""
        if not chunk.choices and not chunk.HasField("usage"):
            return None
        return chunk

    def map_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        try:
            data = loads(body)
        except ValueError:
            data = {"error": {"message": body[:500].decode("utf-8", "replace")}}
        if not isinstance(data, dict):
            data = {}
        err = openai_error(status, headers, data)
        if err.kind is not ErrorKind.CONTENT_POLICY and _inner_code(data) == "ResponsibleAIPolicyViolation":
            err.kind = ErrorKind.CONTENT_POLICY
        if headers.get("apim-request-id") and not err.request_id:
            err.request_id = headers["apim-request-id"]
        return err


def _inner_code(data: dict[str, Any]) -> str | None:
    """``error.innererror.code`` (Azure's content-filter detail), if any."""
    err = data.get("error")
    inner = err.get("innererror") if isinstance(err, dict) else None
    code = inner.get("code") if isinstance(inner, dict) else None
    return code if isinstance(code, str) else None


def adapters(env: Mapping[str, str] | None = None) -> list[ProviderAdapter[Any]]:
    """The Azure OpenAI adapter."""
    return [AzureAdapter(AZURE)]
