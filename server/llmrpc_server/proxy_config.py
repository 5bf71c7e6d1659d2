"""LiteLLM proxy ``config.yaml`` (or the same document as JSON) -> a typed :class:`ProxyConfig`.

The document's sections are LiteLLM's: ``model_list`` (deployments behind public model names),
``router_settings``, ``litellm_settings``, ``general_settings``, ``environment_variables``, plus
``keys`` (virtual keys, kept raw here: their own module parses them). Values spelled
``os.environ/NAME`` are read from the environment at load time, anywhere in the document; a missing
variable is a startup error naming it. A malformed value is a :class:`ConfigError` whose message
starts with the path of the field (``model_list[2].litellm_params.rpm: expected an integer``).
Keys this gateway does not know are kept out of the typed object and reported in
:attr:`ProxyConfig.warnings`, which the server logs at startup: nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "PROXY_SECTIONS",
    "ROUTING_STRATEGIES",
    "ConfigError",
    "DeploymentConfig",
    "GeneralSettings",
    "LitellmParams",
    "LitellmSettings",
    "ProxyConfig",
    "RouterSettings",
    "is_proxy_config",
    "load_document",
    "load_proxy_config",
    "parse_proxy_config",
    "proxy_settings",
]

# Top-level keys that make a document a LiteLLM proxy config rather than a flat llmrpc settings file.
PROXY_SECTIONS = frozenset({
    "model_list", "router_settings", "litellm_settings", "general_settings", "environment_variables", "keys",
})

# LiteLLM's names; "usage-based-routing-v2" is its alias of the usage-based strategy.
ROUTING_STRATEGIES = (
    "simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing", "usage-based-routing-v2",
)

_ENV_PREFIX = "os.environ/"


class ConfigError(ValueError):
    """A config document that cannot be served; ``path`` names the offending field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


# --- typed sections ---------------------------------------------------------------------------
# pydantic does the type checking; each model lists the keys this gateway acts on. ``extra="allow"``
# keeps the rest so they can be reported (or, for litellm_params, forwarded to the provider).


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, str_strip_whitespace=True)


class LitellmParams(_Section):
    """One deployment's ``litellm_params``; any other key is a provider extra sent like ``extra_body``."""

    model: str = Field(min_length=1)
    api_base: str | None = None
    api_key: str | None = Field(default=None, repr=False)  # never in logs or reprs
    api_version: str | None = None
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    timeout: float | None = Field(default=None, gt=0)
    stream_timeout: float | None = Field(default=None, gt=0)
    max_retries: int | None = Field(default=None, ge=0)
    order: int | None = Field(default=None, ge=0)
    weight: float | None = Field(default=None, ge=0)

    @property
    def extras(self) -> dict[str, Any]:
        """Provider extras: every key not named above, forwarded in the upstream body."""
        return dict(self.model_extra or {})


class DeploymentConfig(_Section):
    """One ``model_list`` entry: a deployment serving the public ``model_name``."""

    model_name: str = Field(min_length=1)
    litellm_params: LitellmParams
    model_info: dict[str, Any] = Field(default_factory=dict)

    def deployment_id(self, index: int) -> str:
        """``model_info.id`` when set, else the entry's position: never anything secret."""
        given = self.model_info.get("id")
        return str(given) if given not in (None, "") else f"{self.model_name}#{index}"


class RouterSettings(_Section):
    """``router_settings``: how a model group picks and fails over between its deployments."""

    routing_strategy: Literal[
        "simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing", "usage-based-routing-v2",
    ] = "simple-shuffle"
    num_retries: int | None = Field(default=None, ge=0)
    timeout: float | None = Field(default=None, gt=0)
    allowed_fails: int = Field(default=3, ge=0)
    cooldown_time: float = Field(default=5.0, ge=0)
    fallbacks: list[dict[str, list[str]]] = Field(default_factory=list)
    context_window_fallbacks: list[dict[str, list[str]]] = Field(default_factory=list)
    content_policy_fallbacks: list[dict[str, list[str]]] = Field(default_factory=list)
    model_group_alias: dict[str, str] = Field(default_factory=dict)
    disable_cooldowns: bool = False
    # LiteLLM's router shares cooldowns and usage through Redis: here they become redis_url.
    redis_host: str | None = None
    redis_port: int | None = Field(default=None, gt=0, lt=65536)
    redis_password: str | None = Field(default=None, repr=False)

    @field_validator("model_group_alias", mode="before")
    @classmethod
    def _alias_targets(cls, value: Any) -> Any:
        # LiteLLM also takes {"alias": {"model": "group", "hidden": true}}; the group is what routes.
        if isinstance(value, Mapping):
            return {k: (v.get("model") if isinstance(v, Mapping) else v) for k, v in value.items()}
        return value


class CacheParams(_Section):
    """``litellm_settings.cache_params``: mapped onto the gateway's response cache."""

    type: str = "local"
    host: str | None = None  # type: redis (LiteLLM's names); becomes redis_url
    port: int | None = Field(default=None, gt=0, lt=65536)
    password: str | None = Field(default=None, repr=False)
    ttl: float | None = Field(default=None, gt=0)
    namespace: str | None = None
    mode: str | None = None


class LitellmSettings(_Section):
    """``litellm_settings``: module-level LiteLLM settings this gateway maps onto its own."""

    drop_params: bool | None = None
    num_retries: int | None = Field(default=None, ge=0)
    request_timeout: float | None = Field(default=None, gt=0)
    success_callback: list[str] = Field(default_factory=list)
    failure_callback: list[str] = Field(default_factory=list)
    callbacks: list[str] = Field(default_factory=list)
    cache: bool = False
    cache_params: CacheParams = Field(default_factory=CacheParams)


class GeneralSettings(_Section):
    """``general_settings``: the proxy's own settings; ``master_key`` is an admin credential."""

    master_key: str | None = Field(default=None, repr=False)


class _Document(_Section):
    model_list: list[DeploymentConfig] = Field(default_factory=list)
    router_settings: RouterSettings = Field(default_factory=RouterSettings)
    litellm_settings: LitellmSettings = Field(default_factory=LitellmSettings)
    general_settings: GeneralSettings = Field(default_factory=GeneralSettings)
    environment_variables: dict[str, str] = Field(default_factory=dict)
    keys: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("environment_variables", mode="before")
    @classmethod
    def _env_strings(cls, value: Any) -> Any:
        if isinstance(value, Mapping):  # YAML reads `PORT: 8080` as an int; the environment holds strings
            return {k: v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
        return value


@dataclass(frozen=True)
class ProxyConfig:
    """A validated proxy config. ``keys`` is the raw ``keys:`` list (each a mapping, ``os.environ/``
    values already resolved) for the virtual-keys module; ``warnings`` lists unknown keys by path."""

    model_list: tuple[DeploymentConfig, ...] = ()
    router_settings: RouterSettings = field(default_factory=RouterSettings)
    litellm_settings: LitellmSettings = field(default_factory=LitellmSettings)
    general_settings: GeneralSettings = field(default_factory=GeneralSettings)
    environment_variables: Mapping[str, str] = field(default_factory=dict)
    keys: tuple[Mapping[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    source: str = ""


# --- loading ----------------------------------------------------------------------------------


def load_document(path: str) -> Any:
    """The parsed file: JSON for ``.json`` names, else YAML (a superset of JSON)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        if path.endswith(".json"):
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError("", f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}") from None


def is_proxy_config(document: Any) -> bool:
    """True for a LiteLLM proxy config (it has one of :data:`PROXY_SECTIONS` at the top level);
    a flat llmrpc settings file maps setting names to values instead."""
    return isinstance(document, Mapping) and any(key in PROXY_SECTIONS for key in document)


def load_proxy_config(path: str, environ: Mapping[str, str]) -> ProxyConfig:
    """Read and validate the proxy config at ``path``."""
    return parse_proxy_config(load_document(path), environ, source=path)


def parse_proxy_config(document: Any, environ: Mapping[str, str], *, source: str = "") -> ProxyConfig:
    """Validate a parsed document (resolving ``os.environ/`` values from ``environ``)."""
    if not isinstance(document, Mapping):
        raise ConfigError("", "the config must be a mapping of sections")
    # LiteLLM sets environment_variables before it reads os.environ/ values; the real environment wins.
    section = document.get("environment_variables")
    if isinstance(section, Mapping):
        environ = {**{str(k): str(v) for k, v in section.items() if isinstance(v, str | int | float)}, **environ}
    resolved = _resolve_env(document, environ, "")
    try:
        doc = _Document.model_validate(resolved)
    except ValidationError as exc:
        raise _config_error(exc) from None
    _check_semantics(doc)
    return ProxyConfig(
        model_list=tuple(doc.model_list), router_settings=doc.router_settings,
        litellm_settings=doc.litellm_settings, general_settings=doc.general_settings,
        environment_variables=doc.environment_variables, keys=tuple(doc.keys),
        warnings=tuple(_unknown_keys(doc)), source=source,
    )


def _resolve_env(value: Any, environ: Mapping[str, str], path: str) -> Any:
    """``os.environ/NAME`` -> the variable's value, everywhere in the document."""
    if isinstance(value, str) and value.startswith(_ENV_PREFIX):
        name = value[len(_ENV_PREFIX):]
        if name not in environ:
            raise ConfigError(path, f"environment variable {name} is not set")
        return environ[name]
    if isinstance(value, Mapping):
        return {k: _resolve_env(v, environ, _join(path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, environ, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


_MESSAGES = {
    "int_type": "expected an integer", "int_parsing": "expected an integer", "int_from_float": "expected an integer",
    "float_type": "expected a number", "float_parsing": "expected a number",
    "bool_type": "expected a boolean", "bool_parsing": "expected a boolean",
    "string_type": "expected a string", "dict_type": "expected a mapping", "list_type": "expected a list",
    "model_type": "expected a mapping", "missing": "required",
}


def _config_error(exc: ValidationError) -> ConfigError:
    """The first validation error as ``path: message``."""
    err = exc.errors()[0]
    path = ""
    for part in err["loc"]:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, part)
    message = _MESSAGES.get(err["type"], err["msg"])
    if err["type"] == "literal_error" and path.endswith("routing_strategy"):
        message = f"expected one of {', '.join(ROUTING_STRATEGIES)}, got {err['input']!r}"
    return ConfigError(path, message)


def _check_semantics(doc: _Document) -> None:
    """Cross-field rules pydantic cannot say: unique deployment ids, fallbacks/aliases naming groups."""
    seen: set[str] = set()
    for i, dep in enumerate(doc.model_list):
        dep_id = dep.deployment_id(i)
        if dep_id in seen:
            raise ConfigError(f"model_list[{i}].model_info.id", f"duplicate deployment id {dep_id!r}")
        seen.add(dep_id)
    rs = doc.router_settings
    for name in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
        for i, entry in enumerate(getattr(rs, name)):
            if len(entry) != 1:
                raise ConfigError(f"router_settings.{name}[{i}]",
                                  "expected a mapping of one model name to a list of models")


def _unknown_keys(doc: _Document) -> list[str]:
    """Paths of keys no section knows (litellm_params extras are provider extras, not unknown)."""
    out = [k for k in (doc.model_extra or {})]
    for name in ("router_settings", "litellm_settings", "general_settings"):
        section: BaseModel = getattr(doc, name)
        out.extend(f"{name}.{k}" for k in (section.model_extra or {}))
    out.extend(f"litellm_settings.cache_params.{k}" for k in (doc.litellm_settings.cache_params.model_extra or {}))
    for i, dep in enumerate(doc.model_list):
        out.extend(f"model_list[{i}].{k}" for k in (dep.model_extra or {}))
    return [f"unknown config key {path} is ignored" for path in out]


def proxy_settings(config: ProxyConfig) -> tuple[dict[str, Any], list[str]]:
    """The flat llmrpc settings a proxy config implies (at config-file precedence: ``LLMRPC_*`` and
    flags still win), and warnings about what is mapped differently."""
    ls, rs = config.litellm_settings, config.router_settings
    out: dict[str, Any] = {}
    warnings: list[str] = []
    if ls.drop_params is not None:
        out["drop_params"] = ls.drop_params
    retries = rs.num_retries if rs.num_retries is not None else ls.num_retries
    if retries is not None:
        out["num_retries"] = retries
    timeout = rs.timeout if rs.timeout is not None else ls.request_timeout
    if timeout is not None:
        out["default_timeout"] = timeout
    # LiteLLM's `callbacks` are called on success and failure alike.
    success = _unique([*ls.success_callback, *ls.callbacks])
    failure = _unique([*ls.failure_callback, *ls.callbacks])
    if success:
        out["success_callback"] = tuple(success)
    if failure:
        out["failure_callback"] = tuple(failure)
    if ls.cache:
        params = ls.cache_params
        # LiteLLM's mode "default_off" caches only the calls that ask for it.
        out["cache_default"] = params.mode != "default_off"
        if params.ttl is not None:
            out["cache_ttl"] = params.ttl
        if params.namespace:
            out["cache_namespace"] = params.namespace
        if params.type == "redis":
            out["redis_url"] = _redis_url(params.host, params.port, params.password)
        elif params.type not in ("local", "disk"):
            warnings.append(f"litellm_settings.cache_params.type {params.type!r} is not implemented yet: "
                            "using the SQLite response cache")
    if rs.redis_host and "redis_url" not in out:
        out["redis_url"] = _redis_url(rs.redis_host, rs.redis_port, rs.redis_password)
    for name in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
        merged = {model: tuple(targets) for entry in getattr(rs, name) for model, targets in entry.items()}
        if merged:
            out[name] = merged
    if config.general_settings.master_key:
        out["auth_tokens"] = (config.general_settings.master_key,)
    return out, warnings


def _redis_url(host: str | None, port: int | None, password: str | None) -> str:
    """LiteLLM's Redis host/port/password as a ``redis://`` URL (the password quoted)."""
    from urllib.parse import quote

    auth = f":{quote(password, safe='')}@" if password else ""
    host = host or "localhost"
    return f"redis://{auth}{f'[{host}]' if ':' in host else host}:{port or 6379}"


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))
