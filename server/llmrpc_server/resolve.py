"""Where a call goes: the model group or provider route of each model a call may use, with the
provider's supported-parameter policy applied, resolved at most once per call.

The service wraps every validated request in a :class:`Call` and hands it down the backend chain
(``backend.Backend``). The layers that need the route ask the call for it: the response cache for its
key, the pipeline to send the request; whichever asks first resolves it, the other reuses the answer
(or the error). So the cache never calls the pipeline, and routing runs once per call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from llmrpc.v1 import completion_service_pb2 as pb

from .config import Settings
from .deployments import Candidate, DeploymentTable, ModelGroup, apply_extras, request_table, with_credentials
from .egress import EgressRefused
from .errors import ServiceError, invalid_argument
from .executor import egress_refused
from .params import ALWAYS_DROPPED, openai_name, set_params, unforwarded_body_keys, without_body_keys, without_params
from .providers.base import ProviderError, Target
from .reasons import Reason
from .router import Route, Router

__all__ = ["Call", "Prepared", "Resolver"]

Prepared = tuple[Route, pb.CompleteRequest]  # the route, and the request as that provider gets it


class Resolver:
    """Resolves models for calls. One instance per server process; :meth:`reconfigure` swaps the
    settings and config table for calls that start afterwards."""

    def __init__(self, router: Router, settings: Settings, table: DeploymentTable | None = None) -> None:
        self.router = router
        self._settings = settings
        self._egress = settings.egress_policy()
        # The config's model groups; None without a model_list, and then no call looks anything up.
        self.table = table

    def reconfigure(self, settings: Settings, table: DeploymentTable | None) -> None:
        """A reloaded config: calls that start from now on use it; calls in flight keep what they
        read when they started (a :class:`Call` reads the settings and table once)."""
        self._settings = settings
        self.table = table

    def call(self, req: pb.CompleteRequest) -> Call:
        """``req`` as it goes down the backend chain; nothing is resolved until a layer asks."""
        return Call(req, self, self._settings, self.table)

    def is_group(self, req: pb.CompleteRequest, model: str) -> bool:
        """True when ``model`` names a model group (or alias) for this request."""
        return self.call(req).group(model) is not None

    def prepare(self, req: pb.CompleteRequest, model: str) -> Prepared:
        """Route and request of ``model`` (for a model group, with its first deployment)."""
        return self.call(req).first_route(model)

    # ---- resolution, for one Call -------------------------------------------------------------
    def route(self, req: pb.CompleteRequest, model: str, settings: Settings) -> Prepared:
        """A model that is not a group: the router's route with the parameter policy applied."""
        return self._param_policy(self.router.resolve(req, model), req, model, settings)

    def deployment(self, req: pb.CompleteRequest, candidate: Candidate, settings: Settings) -> Prepared:
        """Route and request for one deployment: its extras applied; a config deployment's base and
        key are the server's own (configured together), a request deployment's are the caller's."""
        dep, model = candidate.deployment, candidate.model
        creq = apply_extras(req, dep.extras)
        if dep.caller_named:
            creq = with_credentials(creq, dep)
            route = self.router.resolve(creq, model)
        else:
            if req.api_base or req.api_key:
                name = "api_base" if req.api_base else "api_key"
                raise invalid_argument([(name, f"model {req.model!r} is served by the gateway's configured "
                                               "deployments; a request cannot name their base or key")])
            route = self._server_route(creq, model, candidate, settings)
        return self._param_policy(Route(route.adapter, replace(route.target, deployment=dep.id)), creq, model,
                                  settings)

    def _server_route(self, req: pb.CompleteRequest, model: str, candidate: Candidate, settings: Settings) -> Route:
        dep = candidate.deployment
        adapter, name = self.router.split_for(req, model)
        env = settings.env
        base = dep.api_base or _first(env, adapter.env_bases) or adapter.default_base
        if not base:
            raise invalid_argument([("model", f"deployment {dep.id!r} of {req.model!r} has no api_base for "
                                              f"provider {adapter.name!r}")])
        version = dep.api_version or env.get(f"{adapter.name.upper()}_API_VERSION")
        target = Target(provider=adapter.name, model=name, api_base=base,
                        api_key=dep.api_key or _first(env, adapter.env_keys), api_version=version,
                        requested_model=model, deployment=dep.id)
        return Route(adapter, target)

    def _param_policy(self, route: Route, req: pb.CompleteRequest, model: str, settings: Settings) -> Prepared:
        if route.target.base_from_caller and self._egress.refused(route.target.api_base):
            raise egress_refused(EgressRefused("api_base", "this gateway does not accept base URLs from callers "
                                                           "(--client-api-base off); leave api_base unset"))
        if req.HasField("extra_body") and (own := unforwarded_body_keys(req, route.adapter.litellm_body_keys)):
            req = without_body_keys(req, own)
        unsupported = [f for f in set_params(req) if f not in route.adapter.supported_params]
        if not unsupported:
            return route, req
        drop = req.drop_params if req.HasField("drop_params") else settings.drop_params
        if drop or ALWAYS_DROPPED.issuperset(unsupported):
            return route, without_params(req, unsupported)
        if not ALWAYS_DROPPED.isdisjoint(unsupported):
            req = without_params(req, [f for f in unsupported if f in ALWAYS_DROPPED])
            unsupported = [f for f in unsupported if f not in ALWAYS_DROPPED]
        names = ", ".join(openai_name(f) for f in unsupported)
        raise invalid_argument(
            [(f, f"{route.adapter.name} does not support parameter {openai_name(f)!r}; "
                 "set drop_params=true to drop it") for f in unsupported],
            reason=Reason.UNSUPPORTED_PARAMETER,
            metadata={"param": names, "provider": route.adapter.name, "model": model},
        )


class Call:
    """One call on its way down the backend chain: the validated request, the settings and model
    tables it started with, and each route at most once (memoized, failures included)."""

    __slots__ = ("_groups", "_prepared", "_resolver", "_tables", "req", "settings", "table")

    def __init__(self, req: pb.CompleteRequest, resolver: Resolver, settings: Settings,
                 table: DeploymentTable | None) -> None:
        self.req = req
        self.settings = settings  # read once: a reload never changes a call in flight
        self.table = table
        self._resolver = resolver
        self._tables: tuple[DeploymentTable, ...] | None = None
        self._groups: dict[str, ModelGroup | None] = {}
        self._prepared: dict[object, Prepared | ServiceError | ProviderError] = {}

    @property
    def tables(self) -> tuple[DeploymentTable, ...]:
        """Where model groups are looked up: the request's own ``model_list`` first, then the
        config's; empty (and nothing is looked up) without either."""
        if self._tables is None:
            config = () if self.table is None else (self.table,)
            self._tables = (request_table(self.req), *config) if self.req.model_list else config
        return self._tables

    def group(self, model: str) -> ModelGroup | None:
        """The model group serving ``model`` in this call, or None (the same object every time)."""
        if model not in self._groups:
            self._groups[model] = _group_of(self.tables, model) if self.tables else None
        return self._groups[model]

    def primary(self) -> str:
        """The requested model with a ``model_group_alias`` resolved: fallbacks are keyed by group."""
        for table in self.tables:
            if self.req.model in table.aliases:
                return table.aliases[self.req.model]
        return self.req.model

    def route(self, model: str) -> Prepared:
        """Route and request of ``model``, a model that is not a group."""
        return self._once(model, lambda: self._resolver.route(self.req, model, self.settings))

    def deployment(self, candidate: Candidate) -> Prepared:
        """Route and request of one deployment of a group (a candidate of :meth:`group`)."""
        return self._once(id(candidate), lambda: self._resolver.deployment(self.req, candidate, self.settings))

    def first_route(self, model: str) -> Prepared:
        """Route and request of ``model``; for a group, of its first deployment (what the response
        cache keys on)."""
        group = self.group(model)
        return self.route(model) if group is None else self.deployment(group.candidates[0])

    def _once(self, key: object, resolve: Callable[[], Prepared]) -> Prepared:
        known = self._prepared.get(key)
        if known is None:
            try:
                known = resolve()
            except (ServiceError, ProviderError) as exc:
                known = exc
            self._prepared[key] = known
        if isinstance(known, BaseException):
            raise known
        return known


def _group_of(tables: tuple[DeploymentTable, ...], model: str) -> ModelGroup | None:
    for table in tables:
        group = table.lookup(model)
        if group is not None:
            return group
    return None


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    return None
