"""Which request fields are OpenAI parameters, and the drop_params policy.

Gateway-only fields (routing, credentials, caching, retries...) are never checked against a
provider's supported list; every other field the caller set is an OpenAI parameter the provider must
accept, or it is rejected (INVALID_ARGUMENT, UNSUPPORTED_PARAMETER) or dropped with drop_params.
"""

from __future__ import annotations

from llmrpc._litellm_params import LITELLM_OWN_PARAMS
from llmrpc.v1 import completion_service_pb2 as pb

from .proto_json import clear_field

__all__ = [
    "ALWAYS_DROPPED",
    "GATEWAY_FIELDS",
    "openai_name",
    "set_params",
    "unforwarded_body_keys",
    "without_body_keys",
    "without_params",
]

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
        "organization",
    }
)

# OpenAI parameters LiteLLM never reports as unsupported: a provider without them just does not get
# them (``user`` on Gemini), with or without drop_params.
ALWAYS_DROPPED = frozenset({"user"})
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


def unforwarded_body_keys(req: pb.CompleteRequest, taken: frozenset[str] = frozenset()) -> list[str]:
    """``extra_body`` keys that are LiteLLM's own arguments (``tags``, ``litellm_call_id``,
    ``input_cost_per_token``...): LiteLLM never sends them to a provider, so neither does the gateway,
    except those in ``taken`` (the adapter's ``litellm_body_keys``: the mock's ``mock_tool_calls``)."""
    return sorted(LITELLM_OWN_PARAMS.intersection(req.extra_body.fields) - taken)


def without_body_keys(req: pb.CompleteRequest, keys: list[str]) -> pb.CompleteRequest:
    """A copy of ``req`` without ``keys`` in ``extra_body``."""
    copy = pb.CompleteRequest()
    copy.CopyFrom(req)
    for key in keys:
        del copy.extra_body[key]
    return copy
