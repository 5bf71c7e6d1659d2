"""Which request fields are OpenAI parameters, and the drop_params policy.

Gateway-only fields (routing, credentials, caching, retries...) are never checked against a
provider's supported list; every other field the caller set is an OpenAI parameter the provider must
accept, or it is rejected (INVALID_ARGUMENT, UNSUPPORTED_PARAMETER) or dropped with drop_params.
"""

from __future__ import annotations

from llmrpc.v1 import completion_service_pb2 as pb

from .convert import clear_field

__all__ = ["GATEWAY_FIELDS", "openai_name", "set_params", "without_params"]

GATEWAY_FIELDS = frozenset(
    {
        "model",
        "messages",
        "timeout",
        "deployment_id",
        "api_base",
        "api_version",
        "api_key",
        "caching",
        "cache",
        "num_retries",
        "mock_response",
        "drop_params",
        "metadata",
        "extra_headers",
        "extra_body",
        "fallbacks",
        "context_window_fallbacks",
        "content_policy_fallbacks",
        "model_list",
    }
)

# Proto field names that differ from the OpenAI parameter they carry.
_OPENAI_NAMES = {"provider_metadata": "metadata"}


def openai_name(field: str) -> str:
    """The OpenAI / LiteLLM parameter name of a request field."""
    return _OPENAI_NAMES.get(field, field)


def set_params(req: pb.CompleteRequest) -> list[str]:
    """The OpenAI parameters the caller set, as proto field names, in field order."""
    return [fd.name for fd, _ in req.ListFields() if fd.name not in GATEWAY_FIELDS]


def without_params(req: pb.CompleteRequest, fields: list[str]) -> pb.CompleteRequest:
    """A copy of ``req`` with ``fields`` cleared (drop_params)."""
    copy = pb.CompleteRequest()
    copy.CopyFrom(req)
    for name in fields:
        clear_field(copy, name)
    return copy
