"""Which models a caller may name (``ListModels``), and what is known about a config model group
(``GetModelInfo`` for a ``model_name``, alias or wildcard of the proxy config).

A group's information is that of its first deployment's ``provider/model`` (genai-prices limits and
prices, the capability table), overridden by the keys the config's ``model_info`` sets, as LiteLLM
lets ``model_info`` override its model map (``max_input_tokens``, ``input_cost_per_token``, ...).
Nothing of ``litellm_params`` (bases, keys) is ever listed.

``allowed`` is the hook for virtual keys: a predicate over public names; a caller sees only the
names it accepts (None: every name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from llmrpc.v1 import completion_service_pb2 as pb

from .deployments import DeploymentTable, ModelGroup
from .errors import ServiceError
from .model_info import model_info
from .router import Router

__all__ = ["ModelFilter", "group_info", "list_models"]

ModelFilter = Callable[[str], bool]  # True for a public model name the caller may use

# model_info keys that override the looked-up values (LiteLLM's model map keys).
_NUMBERS = ("max_input_tokens", "max_output_tokens", "max_tokens")
_PRICES = ("input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
           "cache_creation_input_token_cost", "search_cost_per_request")
_FLAGS = tuple(f.name for f in pb.ModelInfo.DESCRIPTOR.fields if f.name.startswith("supports_"))


def list_models(table: DeploymentTable | None, router: Router, aliases: Mapping[str, str],
                 env: Mapping[str, str], allowed: ModelFilter | None = None) -> list[pb.ModelInfo]:
    """Every public name: the config's model groups, wildcards and ``model_group_alias`` entries,
    then the server's ``aliases`` setting, then ``provider/*`` for each provider the server has a
    key or base for (any of its models may be named), each with its information."""
    out: list[pb.ModelInfo] = []
    seen: set[str] = set()
    for name, info in _entries(table, router, aliases, env):
        if name in seen or (allowed is not None and not allowed(name)):
            continue
        seen.add(name)
        out.append(info)
    return out


def _entries(table: DeploymentTable | None, router: Router, aliases: Mapping[str, str],
             env: Mapping[str, str]) -> Iterator[tuple[str, pb.ModelInfo]]:
    if table is not None:
        for name in table.group_names():
            try:
                info = group_info(table, router, name)
            except ServiceError:  # a deployment naming a provider this server lacks: not listed
                continue
            if info is not None:
                yield name, info
    for alias, target in aliases.items():
        try:
            adapter, model = router.split(alias)
        except ServiceError:
            continue  # a misconfigured alias serves nothing: leave it out
        info = model_info(adapter, alias, model)
        info.alias_of = target
        yield alias, info
    for provider in sorted(router.adapters):
        adapter = router.adapters[provider]
        if any(env.get(name) for name in (*adapter.env_keys, *adapter.env_bases)):
            yield f"{provider}/*", pb.ModelInfo(key=f"{provider}/*", provider=provider, mode="chat", wildcard=True)


def group_info(table: DeploymentTable, router: Router, name: str) -> pb.ModelInfo | None:
    """Information about the group, alias or wildcard ``name`` (a wildcard pattern itself, such as
    ``anthropic/*``, is described by its provider only); None when the config does not serve it."""
    alias_of = table.aliases.get(name)
    pattern = "*" in name
    if pattern:
        members = table.members(name)
        if not members:
            return None
        adapter, _ = router.split(members[0].model.replace("*", "x"))
        info = pb.ModelInfo(key=name, provider=adapter.name, mode="chat", wildcard=True)
        info.deployments.extend(d.id for d in members)
        return info
    group = table.lookup(name)
    if group is None:
        return None
    info = _first_deployment_info(group, router, name)
    if alias_of:
        info.alias_of = alias_of
    return info


def _first_deployment_info(group: ModelGroup, router: Router, name: str) -> pb.ModelInfo:
    first = group.candidates[0]
    adapter, model = router.split(first.model)
    info = model_info(adapter, name, model)
    info.deployments.extend(c.deployment.id for c in group.candidates)
    _override(info, first.deployment.model_info)
    if first.deployment.model_info:
        info.config_model_info.update(_plain(first.deployment.model_info))
    return info


def _override(info: pb.ModelInfo, given: Mapping[str, Any]) -> None:
    """The config's ``model_info`` values win over the looked-up ones (as in LiteLLM)."""
    for key in _NUMBERS:
        value = given.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31:
            setattr(info, key, value)
    for key in _PRICES:
        value = given.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            setattr(info, key, float(value))
    for key in _FLAGS:
        value = given.get(key)
        if isinstance(value, bool):
            setattr(info, key, value)
    mode = given.get("mode")
    if isinstance(mode, str) and mode:
        info.mode = mode


def _plain(value: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe copy for a Struct (YAML may hold dates and the like: they become strings)."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, Mapping):
            out[str(key)] = _plain(item)
        elif isinstance(item, list):
            out[str(key)] = [i if isinstance(i, str | int | float | bool) or i is None else str(i) for i in item]
        elif isinstance(item, str | int | float | bool) or item is None:
            out[str(key)] = item
        else:
            out[str(key)] = str(item)
    return out
