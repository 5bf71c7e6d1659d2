"""``ListModels``: the public model names the gateway serves this caller (config model groups,
aliases, wildcards), each with what ``get_model_info`` would say about it."""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict

from ._client import Client, _client_for
from ._model_info import _call, _info_dict
from .v1 import completion_service_pb2

__all__ = ["list_models"]


def list_models(*, client: Client | None = None) -> list[dict[str, Any]]:
    """Every model name this caller may use, as ``get_model_info`` dicts (LiteLLM's keys) plus
    ``deployments`` (the group's deployment ids), ``alias_of``, ``wildcard`` and ``model_info``
    (the config's own ``model_info`` of the group's first deployment)."""
    gateway = _client_for({"client": client})
    reply = _call(gateway, completion_service_pb2.ListModelsRequest(), "")
    return [_listed(info) for info in reply.models]


def _listed(info: completion_service_pb2.ModelInfo) -> dict[str, Any]:
    out = _info_dict(info)
    out.update({
        "deployments": list(info.deployments),
        "alias_of": info.alias_of if info.HasField("alias_of") else None,
        "wildcard": info.wildcard,
        "model_info": MessageToDict(info.config_model_info),
    })
    return out
