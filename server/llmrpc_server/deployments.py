"""Model groups of deployments (LiteLLM's Router): a public ``model_name`` (or a
``model_group_alias``, or a wildcard such as ``anthropic/*``) served by several deployments, of
which each call takes one by the routing strategy, skipping those cooling down or at their
``rpm``/``tpm``.

This layer sits in front of :class:`~llmrpc_server.router.Router`: a deployment's
``litellm_params.model`` is an ordinary ``provider/model`` string that the router splits. The
pipeline asks :meth:`DeploymentTable.lookup` for a group only when a table exists (a config
``model_list``, or the request's own ``model_list``), so calls without one pay nothing.

Cooldowns follow LiteLLM: more than ``allowed_fails`` failures of a deployment within a minute take
it out for ``cooldown_time`` seconds; a 429 with ``Retry-After`` takes it out for that long at once.
Errors that say nothing about the deployment (a bad request, a context window, a content policy)
never count, and a group's only deployment is never cooled (there is nowhere else to go).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from llmrpc.v1 import completion_service_pb2 as pb
from pydantic import ValidationError

from .deployment_state import DeploymentState, LocalDeploymentState
from .errors import invalid_argument
from .providers.base import ErrorKind, ProviderError
from .proxy_config import ConfigError, DeploymentConfig, ProxyConfig, RouterSettings
from .routing_strategies import choose, shuffle_weights
from .upstream_checks import upstream_violations

__all__ = [
    "MAX_REQUEST_DEPLOYMENTS",
    "Candidate",
    "Deployment",
    "DeploymentTable",
    "ModelGroup",
    "apply_extras",
    "request_table",
    "with_credentials",
]

MAX_REQUEST_DEPLOYMENTS = 64  # a request's own model_list is bounded like every other repeated field

# Failures that say something about the deployment (LiteLLM cools 429, 401, 404, 408 and 5xx down).
_COOLING = frozenset({
    ErrorKind.RATE_LIMIT, ErrorKind.QUOTA, ErrorKind.AUTH, ErrorKind.PERMISSION, ErrorKind.NOT_FOUND,
    ErrorKind.UNAVAILABLE, ErrorKind.OVERLOADED, ErrorKind.TIMEOUT, ErrorKind.UNREACHABLE,
    ErrorKind.BAD_RESPONSE, ErrorKind.STREAM_ERROR, ErrorKind.IDLE_TIMEOUT,
})
# Body keys a deployment's extras may never replace.
_RESERVED = frozenset({"model", "messages", "stream", "stream_options", "model_list"})
_REQUEST_FIELDS = pb.CompleteRequest.DESCRIPTOR.fields_by_name


@dataclass(frozen=True, slots=True)
class Deployment:
    """One deployment: where calls of its group may go. ``id`` names it in attempt logs and spans
    (``model_info.id``, else ``model_name#index``); the key is never part of any name."""

    id: str
    model_name: str
    model: str
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_version: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    timeout: float | None = None
    stream_timeout: float | None = None
    max_retries: int | None = None
    order: int | None = None
    weight: float | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    model_info: Mapping[str, Any] = field(default_factory=dict)
    caller_named: bool = False  # from the request's own model_list: the caller-base policy applies

    @classmethod
    def from_config(cls, entry: DeploymentConfig, index: int, *, caller_named: bool = False,
                    path: str = "model_list") -> Deployment:
        p = entry.litellm_params
        extras = p.extras
        _check_extras(extras, f"{path}[{index}].litellm_params")
        _check_credentials(p.api_base, p.api_key, p.api_version, f"{path}[{index}].litellm_params")
        return cls(
            id=entry.deployment_id(index), model_name=entry.model_name, model=p.model, api_base=p.api_base or None,
            api_key=p.api_key or None, api_version=p.api_version, rpm=p.rpm, tpm=p.tpm, timeout=p.timeout,
            stream_timeout=p.stream_timeout, max_retries=p.max_retries, order=p.order, weight=p.weight,
            extras=extras, model_info=dict(entry.model_info), caller_named=caller_named,
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A deployment of a group and the ``provider/model`` it serves for this call (a wildcard
    deployment's ``*`` replaced by the part of the requested name it matched)."""

    deployment: Deployment
    model: str


@dataclass(frozen=True)
class _Policy:
    strategy: str = "simple-shuffle"
    allowed_fails: int = 3
    cooldown_time: float = 5.0
    cooldowns: bool = True


class _Members:
    """A group's candidates as built once per table: what a call's first pick needs when no deployment
    has an ``rpm``/``tpm`` and all share one ``order`` (the common config), so that it skips the
    general filtering and ranking. ``cum_weights``: simple-shuffle's weights, accumulated (None:
    uniform)."""

    __slots__ = ("candidates", "cum_weights", "ids", "plain")

    def __init__(self, candidates: tuple[Candidate, ...]) -> None:
        self.candidates = candidates
        deps = [c.deployment for c in candidates]
        self.ids = tuple(d.id for d in deps)
        self.plain = (all(d.rpm is None and d.tpm is None for d in deps)
                      and len({_rank(d) for d in deps}) == 1)
        weights = shuffle_weights(deps)
        self.cum_weights = tuple(itertools.accumulate(weights)) if weights is not None else None


class DeploymentTable:
    """An immutable routing table (one per loaded config; a reload builds a new one and keeps the
    :class:`DeploymentState`, so counters and cooldowns survive it)."""

    def __init__(self, deployments: Sequence[Deployment], *, settings: RouterSettings | None = None,
                 state: DeploymentState | None = None, rng: random.Random | None = None) -> None:
        rs = settings or RouterSettings()
        self.policy = _Policy(rs.routing_strategy, rs.allowed_fails, rs.cooldown_time, not rs.disable_cooldowns)
        self.state: DeploymentState = state if state is not None else LocalDeploymentState()
        self.deployments = tuple(deployments)
        self.aliases = dict(rs.model_group_alias)
        self._rng = rng or random.Random()
        self._groups: dict[str, list[Deployment]] = {}
        patterns: dict[str, list[Deployment]] = {}
        for dep in self.deployments:
            if "*" in dep.model_name:
                patterns.setdefault(dep.model_name, []).append(dep)
            else:
                self._groups.setdefault(dep.model_name, []).append(dep)
        # LiteLLM tries the most specific pattern first: longest, then most wildcards.
        ordered = sorted(patterns.items(), key=lambda kv: (len(kv[0]), kv[0].count("*")), reverse=True)
        self._patterns = [(re.compile(re.escape(name).replace(r"\*", "(.*)")), deps) for name, deps in ordered]
        self._members = {name: _Members(tuple(Candidate(d, d.model) for d in deps))
                         for name, deps in self._groups.items()}

    @classmethod
    def from_config(cls, config: ProxyConfig, state: DeploymentState | None = None) -> DeploymentTable | None:
        """The table of a proxy config; None when it has no ``model_list`` (nothing to route)."""
        if not config.model_list:
            return None
        deployments = [Deployment.from_config(entry, i) for i, entry in enumerate(config.model_list)]
        return cls(deployments, settings=config.router_settings, state=state)

    def group_names(self) -> list[str]:
        """Public names: exact groups, wildcard patterns and aliases, in config order."""
        names = list(self._groups) + [name for name, _ in self._patterns_in_config_order()] + list(self.aliases)
        return list(dict.fromkeys(names))

    def _patterns_in_config_order(self) -> Iterator[tuple[str, Deployment]]:
        for dep in self.deployments:
            if "*" in dep.model_name:
                yield dep.model_name, dep

    def members(self, name: str) -> list[Deployment]:
        """The deployments of the exact group or pattern ``name`` (after aliases)."""
        name = self.aliases.get(name, name)
        return list(self._groups.get(name) or [d for d in self.deployments if d.model_name == name])

    def lookup(self, model: str) -> ModelGroup | None:
        """The group serving ``model`` (an exact name first, then an alias, then a wildcard), or None."""
        name = self.aliases.get(model, model)
        members = self._members.get(name)
        if members is not None:
            return ModelGroup(name, members.candidates, self, members)
        for regex, pattern_deps in self._patterns:
            match = regex.match(name)
            if match:
                candidates = tuple(Candidate(d, _fill(d.model, match)) for d in pattern_deps)
                return ModelGroup(name, candidates, self)
        return None

    def choose(self, candidates: Sequence[Candidate], members: _Members | None = None) -> Candidate:
        """The strategy's pick; ``members``: ``candidates`` are a whole group's, as built by the table."""
        if members is not None and self.policy.strategy == "simple-shuffle":
            if members.cum_weights is None:
                return self._rng.choice(members.candidates)
            return self._rng.choices(members.candidates, cum_weights=members.cum_weights)[0]
        picked = choose(self.policy.strategy, [c.deployment for c in candidates], self.state, self._rng)
        return next(c for c in candidates if c.deployment is picked)


def _fill(model: str, match: re.Match[str]) -> str:
    """``anthropic/*`` with the matched segments in place of its wildcards (LiteLLM's rule: more
    segments than wildcards means the requested name is used as it is)."""
    if "*" not in model:
        return model
    segments = match.groups()
    if len(segments) > model.count("*"):
        return match.string
    for segment in segments:
        model = model.replace("*", segment, 1)
    return model


class ModelGroup:
    """The deployments one call may use, and the call's view of their state."""

    def __init__(self, name: str, candidates: Sequence[Candidate], table: DeploymentTable,
                 members: _Members | None = None) -> None:
        self.name = name
        self.candidates = candidates
        self._table = table
        self._members = members
        self._tried: list[str] = []

    def pick(self) -> Candidate:
        """The next deployment: not cooling down, under its limits, of the lowest ``order``; one
        not tried yet in this call when there is one (a deployment's ``max_retries`` lets the call
        stay on it that many more times first). Counts the request against its ``rpm``."""
        state = self._table.state
        members = self._members
        if members is not None and members.plain and not self._tried and _none_cooling(state, members.ids):
            # the general path below would keep every candidate: choose among them at once
            picked = self._table.choose(members.candidates, members)
            self._tried.append(picked.deployment.id)
            state.record_request(picked.deployment.id)
            return picked
        available = [c for c in self.candidates if self._usable(c.deployment)]
        if not available:
            raise self._exhausted()
        choice = self._sticky(available)
        if choice is None:
            fresh = [c for c in available if c.deployment.id not in self._tried] or available
            best = min(_rank(c.deployment) for c in fresh)
            choice = self._table.choose([c for c in fresh if _rank(c.deployment) == best])
        self._tried.append(choice.deployment.id)
        state.record_request(choice.deployment.id)
        return choice

    def _sticky(self, available: list[Candidate]) -> Candidate | None:
        if not self._tried:
            return None
        last = self._tried[-1]
        for c in available:
            if c.deployment.id == last and self._tried.count(last) <= (c.deployment.max_retries or 0):
                return c
        return None

    def _usable(self, dep: Deployment) -> bool:
        state = self._table.state
        if state.cooldown_left(dep.id) > 0:
            return False
        if dep.rpm is None and dep.tpm is None:
            return True
        usage = state.usage(dep.id)
        return (dep.rpm is None or usage.requests < dep.rpm) and (dep.tpm is None or usage.tokens < dep.tpm)

    def _exhausted(self) -> ProviderError:
        """LiteLLM's "no deployments available" (a 429): fallbacks apply, the caller may retry."""
        state = self._table.state
        waits = [state.cooldown_left(c.deployment.id) for c in self.candidates]
        cooling = sum(1 for w in waits if w > 0)
        retry_after = min((w for w in waits if w > 0), default=None)
        return ProviderError(
            ErrorKind.RATE_LIMIT,
            f"no deployment of model group {self.name!r} is available: {cooling} of {len(self.candidates)} "
            "cooling down, the rest at their rpm/tpm limit",
            status=429, retry_after=retry_after,
        )

    def has_alternative(self) -> bool:
        """True when a deployment other than the last one tried could take a retry now."""
        last = self._tried[-1] if self._tried else None
        return any(c.deployment.id != last and self._usable(c.deployment) for c in self.candidates)

    def started(self, dep: Deployment) -> None:
        self._table.state.started(dep.id)

    def succeeded(self, dep: Deployment, latency_s: float, tokens: int) -> None:
        state = self._table.state
        state.finished(dep.id, latency_s)
        if tokens:
            state.record_tokens(dep.id, tokens)

    def failed(self, dep: Deployment, err: ProviderError | None) -> None:
        """A call on ``dep`` ended without an answer; cool it down when LiteLLM would."""
        state = self._table.state
        state.finished(dep.id, None)
        policy = self._table.policy
        if err is None or err.kind not in _COOLING or not policy.cooldowns or len(self.candidates) < 2:
            return
        if err.kind is ErrorKind.RATE_LIMIT and err.retry_after:
            state.cool_down(dep.id, err.retry_after)
            return
        if state.record_failure(dep.id) > policy.allowed_fails:
            state.cool_down(dep.id, policy.cooldown_time)


def _none_cooling(state: DeploymentState, ids: tuple[str, ...]) -> bool:
    for dep_id in ids:
        if state.cooldown_left(dep_id) > 0:
            return False
    return True


def _rank(dep: Deployment) -> int:
    # Lower `order` first; a deployment without one comes after every ordered one.
    return dep.order if dep.order is not None else 1 << 30


def _check_extras(extras: Mapping[str, Any], path: str) -> None:
    """Config-time check that each provider extra can be applied (a request field of the right
    type, or a JSON value for the upstream body)."""
    for key, value in extras.items():
        if key in _RESERVED:
            raise ConfigError(f"{path}.{key}", "is set by each request; it cannot be a deployment parameter")
        try:
            apply_extras(pb.CompleteRequest(), {key: value})
        except (TypeError, ValueError, json_format.ParseError) as exc:
            raise ConfigError(f"{path}.{key}", f"cannot be sent: {exc}") from None


def _check_credentials(base: str | None, key: str | None, version: str | None, path: str) -> None:
    """The rules a request's own api_base/api_key/api_version follow (they shape the upstream URL
    and headers), for a deployment's."""
    probe = pb.CompleteRequest()
    if base:
        probe.api_base = base
    if key:
        probe.api_key = key
    if version:
        probe.api_version = version
    present = {fd.name: value for fd, value in probe.ListFields()}
    for name, problem in upstream_violations(probe, present):
        raise ConfigError(f"{path}.{name}", problem)


def with_credentials(req: pb.CompleteRequest, dep: Deployment) -> pb.CompleteRequest:
    """``req`` naming a request deployment's base, key and version (the caller's own)."""
    if not (dep.api_base or dep.api_key or dep.api_version):
        return req
    out = pb.CompleteRequest()
    out.CopyFrom(req)
    if dep.api_base:
        out.api_base = dep.api_base
    if dep.api_key:
        out.api_key = dep.api_key
    if dep.api_version:
        out.api_version = dep.api_version
    return out


def apply_extras(req: pb.CompleteRequest, extras: Mapping[str, Any]) -> pb.CompleteRequest:
    """``req`` with a deployment's extras: a key naming a request parameter the caller left unset
    sets it (``max_tokens: 1024``); any other key goes into ``extra_body`` unless the caller's
    ``extra_body`` has it (the caller's own values win, as LiteLLM's call kwargs do)."""
    if not extras:
        return req
    out = pb.CompleteRequest()
    out.CopyFrom(req)
    present = {fd.name for fd, _ in req.ListFields()}
    for key, value in extras.items():
        fd = _REQUEST_FIELDS.get(key)
        if fd is not None and fd.type != fd.TYPE_MESSAGE and not _is_repeated(fd):
            if key not in present:
                json_format.ParseDict({fd.json_name: value}, out, ignore_unknown_fields=False)
        elif key not in out.extra_body.fields:
            out.extra_body.update({key: value})
    return out


def _is_repeated(fd: Any) -> bool:
    return bool(fd.label == fd.LABEL_REPEATED) if hasattr(fd, "label") else bool(fd.is_repeated)


def request_table(req: pb.CompleteRequest, *, prefix: str = "") -> DeploymentTable:
    """A one-call table over the request's own ``model_list`` (LiteLLM's ``completion(model_list=...)``):
    simple shuffle, a fresh state, its bases and keys caller-named. INVALID_ARGUMENT names the field."""
    if len(req.model_list) > MAX_REQUEST_DEPLOYMENTS:
        raise invalid_argument([(f"{prefix}model_list", f"at most {MAX_REQUEST_DEPLOYMENTS} deployments")])
    deployments = []
    for i, entry in enumerate(req.model_list):
        path = f"{prefix}model_list[{i}]"
        try:
            config = DeploymentConfig.model_validate({
                "model_name": entry.model_name,
                "litellm_params": json_format.MessageToDict(entry.litellm_params),
                "model_info": json_format.MessageToDict(entry.model_info),
            })
            deployments.append(Deployment.from_config(config, i, caller_named=True, path=f"{prefix}model_list"))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise invalid_argument([(f"{path}.{where}" if where else path, err["msg"])]) from None
        except ConfigError as exc:
            raise invalid_argument([(exc.path or path, str(exc).split(": ", 1)[-1])]) from None
    return DeploymentTable(deployments)
