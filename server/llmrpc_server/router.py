"""``"provider/model"`` (plus aliases, env and per-request overrides) -> adapter and target."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmrpc.v1 import completion_service_pb2 as pb

from .credentials import same_base
from .errors import ServiceError, invalid_argument
from .proto_json import has_field
from .providers.base import ProviderAdapter, Target
from .reasons import Reason

__all__ = ["Route", "Router"]

# Bare model names LiteLLM routes without a prefix.
_BARE = (
    (re.compile(r"^(gpt-|o[1-9]|chatgpt-|text-|davinci|babbage|ft:gpt)"), "openai"),
    (re.compile(r"^claude-"), "anthropic"),
    (re.compile(r"^gemini-"), "gemini"),
)


@dataclass(frozen=True, slots=True)
class Route:
    """The adapter to use and where its request goes."""

    adapter: ProviderAdapter[Any]
    target: Target


class Router:
    """Resolves models; pure apart from reading the env snapshot it was given."""

    def __init__(self, adapters: Mapping[str, ProviderAdapter[Any]], env: Mapping[str, str],
                 aliases: Mapping[str, str] | None = None) -> None:
        self.adapters = dict(adapters)
        self._env = env
        self._aliases = dict(aliases or {})
        # Request fields that route to one adapter whatever the model (``answers_field``).
        self._answering = [(a.answers_field, a) for a in self.adapters.values() if a.answers_field]

    @property
    def known_providers(self) -> list[str]:
        return sorted(self.adapters)

    def split(self, model: str, *, field: str = "model") -> tuple[ProviderAdapter[Any], str]:
        """The adapter and upstream model name for a model string, or INVALID_ARGUMENT."""
        model = self._aliases.get(model, model)
        prefix, sep, name = model.partition("/")
        if sep and prefix in self.adapters and name:
            return self.adapters[prefix], name
        for pattern, provider in _BARE:
            if pattern.match(model) and provider in self.adapters:
                return self.adapters[provider], model
        known = ", ".join(self.known_providers)
        what = f"unknown provider {prefix!r}" if sep else f"cannot infer the provider of {model!r}"
        raise invalid_argument(
            [(field, f"{what}; use 'provider/model' with one of: {known}")],
            reason=Reason.UNKNOWN_PROVIDER, metadata={"knownProviders": known},
        )

    def split_for(self, req: pb.CompleteRequest, model: str) -> tuple[ProviderAdapter[Any], str]:
        """:meth:`split`, then the adapter that answers a field ``req`` sets, if any (LiteLLM's
        ``mock_response`` is answered by the mock whatever the model)."""
        adapter, name = self.split(model)
        for field, answering in self._answering:
            if has_field(req, field):
                return answering, name
        return adapter, name

    def check_fallbacks(self, req: pb.CompleteRequest, *, prefix: str = "") -> None:
        """INVALID_ARGUMENT naming ``fallbacks[i]`` (etc.) for a fallback no provider serves,
        before any upstream call is made."""
        for name in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
            for i, model in enumerate(getattr(req, name)):
                self.split(model, field=f"{prefix}{name}[{i}]")

    def check_api_base(self, req: pb.CompleteRequest, *, prefix: str = "") -> None:
        """INVALID_ARGUMENT naming ``api_key`` (etc., with ``prefix``) when the request names a base
        URL that its model or a fallback may not use as asked, before anything is sent. Only requests
        that name a base pay for it; the pipeline resolves every model again (unprefixed) anyway."""
        if not req.api_base:
            return
        for model in (req.model, *req.fallbacks, *req.context_window_fallbacks, *req.content_policy_fallbacks):
            try:
                self.resolve(req, model)
            except ServiceError as err:
                raise err.prefixed(prefix) from None

    def resolve(self, req: pb.CompleteRequest, model: str) -> Route:
        """Where ``model`` (the request's model or a fallback) goes for this request."""
        adapter, name = self.split_for(req, model)
        if adapter.name == "azure" and req.HasField("deployment_id"):
            name = req.deployment_id
        if name in (".", ".."):  # adapters put names in URL paths: never a dot-segment
            raise invalid_argument([("model", f"{name!r} is not a model name")])
        caller_key = req.api_key or None  # "" (proto3 default) is no key
        base, key, base_from_caller = self._base_and_key(req, adapter, caller_key)
        version = (req.api_version if req.HasField("api_version")
                   else self._env.get(f"{adapter.name.upper()}_API_VERSION"))
        target = Target(
            provider=adapter.name, model=name, api_base=base, api_key=key,
            api_version=version, key_from_caller=caller_key is not None, requested_model=model,
            base_from_caller=base_from_caller,
        )
        return Route(adapter, target)

    def _base_and_key(self, req: pb.CompleteRequest, adapter: ProviderAdapter[Any],
                      caller_key: str | None) -> tuple[str, str | None, bool]:
        """The base URL and key of a call, and whether the base is the caller's (the egress policy
        applies to it). The server's key goes only to the base the server configured for the
        provider (``credentials``); a caller-named base takes the caller's key."""
        server_base = self._first(adapter.env_bases) or adapter.default_base
        server_key = self._first(adapter.env_keys)
        named = req.api_base if adapter.transport is None else ""  # an in-process upstream never leaves it
        if not named or (server_base and same_base(named, server_base)):
            if not server_base:
                raise invalid_argument([("api_base", f"provider {adapter.name!r} needs an api_base")])
            return server_base, caller_key or server_key, False
        if caller_key is None and adapter.key_required:
            raise invalid_argument([("api_key", (
                f"required with an api_base the server did not configure for {adapter.name!r}: the "
                "server's own key goes only to its configured base; pass your api_key"))])
        return named, caller_key, True

    def _first(self, names: tuple[str, ...]) -> str | None:
        for name in names:
            if self._env.get(name):
                return self._env[name]
        return None

