"""Server settings: one frozen object built from flags, ``LLMRPC_*`` environment variables and
an optional config file (flags win over env, env over the file, the file over defaults). The file is
either a flat JSON/YAML mapping of setting names, or a LiteLLM proxy config (``model_list``,
``router_settings``, ...; see ``proxy_config``), told apart by its top-level keys."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .egress import API_BASE_MODES, FETCH_MODES, EgressPolicy, proxies_from_env
from .proxy_config import (
    ConfigError,
    ProxyConfig,
    is_proxy_config,
    load_document,
    parse_proxy_config,
    proxy_settings,
)

__all__ = ["Settings", "default_cache_path", "setting_fields"]


def _opt(default: Any, help: str) -> Any:
    """A setting with its help text (shown by ``--help`` and in the README table)."""
    return field(default=default, metadata={"help": help})


def default_cache_path() -> str:
    """Per-user cache file: ``$XDG_CACHE_HOME/llmrpc/cache.sqlite`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "llmrpc" / "cache.sqlite")


@dataclass(frozen=True)
class Settings:
    """Every server setting. The README's configuration table is generated from these docs."""

    host: str = _opt("[::]", 'address to listen on')
    port: int = _opt(50051, 'gRPC port')
    workers: int = _opt(1, 'server processes sharing the port (SO_REUSEPORT); 0 = one per core')
    grace: float = _opt(30.0, 'seconds in-flight calls get to finish on SIGTERM')
    drain_delay: float = _opt(0.0, 'seconds to keep serving after SIGTERM with health NOT_SERVING, so load '
                                   'balancers stop sending calls before new ones are refused')
    default_timeout: float = _opt(600.0, 'seconds a call may take when the caller sets no deadline/timeout')
    stream_idle_timeout: float = _opt(60.0, 'seconds a stream may go without an upstream byte')
    connect_timeout: float = _opt(10.0, 'seconds to connect to an upstream')
    num_retries: int = _opt(2, 'retries of retryable upstream failures when the request sets none')
    drop_params: bool = _opt(False, 'drop unsupported parameters instead of rejecting them')
    max_message_mb: int = _opt(64, 'largest gRPC message accepted or sent, MiB')
    max_concurrent_rpcs: int = _opt(0, 'reject RPCs beyond this many in flight (0 = unlimited)')
    max_connections: int = _opt(1000, 'upstream requests in flight at once, all origins together')
    fetch_media: str = _opt("public", 'download image URLs for providers that take only inline data (ollama): '
                                      'public (public addresses only), all, off')
    fetch_media_max_mb: float = _opt(20.0, 'largest image download, MiB')
    cache_path: str = field(default_factory=default_cache_path, metadata={"help": 'SQLite response cache file'})
    cache_default: bool = _opt(False, 'cache requests that do not set `caching`')
    cache_ttl: float = _opt(86400.0, 'seconds a cache entry lives unless the request sets `ttl`')
    cache_max_mb: float = _opt(256.0, 'cache size bound, MiB; least recently used entries are evicted past it')
    cache_namespace: str = _opt("", 'cache namespace of requests that set none')
    auth_tokens: tuple[str, ...] = _opt((), 'bearer tokens callers must present (none: protected mode applies)')
    tls_cert: str = _opt("", 'PEM certificate chain file: serve TLS (needs --tls-key)')
    tls_key: str = _opt("", 'PEM private key file of --tls-cert (unencrypted)')
    tls_client_ca: str = _opt("", 'PEM CA file: require client certificates it signed (mTLS; needs --tls-cert)')
    allow_unauthenticated: bool = _opt(False, 'serve non-loopback callers without --auth-tokens or --tls-client-ca '
                                              '(turns protected mode off)')
    log_level: str = _opt("INFO", 'logging level')
    input_callback: tuple[str, ...] = _opt((), 'callbacks as a call starts: otel, log, lunary, pkg.mod:func')
    success_callback: tuple[str, ...] = _opt((), 'callbacks when a call is answered (same names)')
    failure_callback: tuple[str, ...] = _opt((), 'callbacks when a call fails (same names)')
    callback_queue_size: int = _opt(1000, 'events queued per callback; more are dropped and counted')
    otel_record_content: bool = _opt(False, 'record prompts and completions on spans and in the log callback')
    metrics_port: int = _opt(0, 'serve Prometheus metrics on this port (0 = off); worker i of --workers uses port + i')
    fallbacks: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, metadata={"help": "model -> fallback models (JSON)"})
    context_window_fallbacks: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, metadata={"help": "model -> models for context-window errors (JSON)"})
    content_policy_fallbacks: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, metadata={"help": "model -> models for content-policy refusals (JSON)"})
    aliases: Mapping[str, str] = field(default_factory=dict, metadata={"help": 'model alias -> "provider/model"'})
    access_log: bool = _opt(False, 'one log line per RPC (logger llmrpc_server.access): method, model, key '
                                   '(auth token index or virtual key alias), status, duration, attempts, cache hit')
    max_connections_per_host: int = _opt(500, 'upstream requests in flight to one origin (scheme, host, port), so one '
                                              'slow base URL cannot take every connection; 0 = --max-connections')
    client_api_base: str = _opt("any", 'base URLs callers name (api_base): any (not link-local/metadata addresses), '
                                       'public (public addresses only, checked at connect), off (refused)')
    client_api_base_allow: tuple[str, ...] = _opt((), 'URL prefixes a caller may always name as api_base, '
                                                      'whatever --client-api-base says (comma-separated)')
    state_path: str = _opt("", 'SQLite file of virtual keys\' counters and spend, shared by the processes on a '
                               'machine ("": state.sqlite beside --cache-path)')
    redis_url: str = field(default="", repr=False, metadata={"help": (
        'Redis (or Valkey) URL, e.g. redis://:password@host:6379/0 or rediss://...: the response cache, virtual '
        'keys\' counters and spend, and router cooldowns and usage are shared there by every replica ("": SQLite, '
        'this machine only)')})
    redis_timeout: float = _opt(0.1, 'seconds a Redis connect or command may take before it counts as a failure')
    redis_failure: str = _opt("fail-open", 'with Redis unreachable, virtual keys\' limits: fail-open (per-replica '
                                           'counters meanwhile) or fail-closed (UNAVAILABLE); the cache misses '
                                           'either way')
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # provider keys/bases snapshot
    proxy: ProxyConfig | None = field(default=None, repr=False)  # the LiteLLM proxy config, when the file is one
    config_warnings: tuple[str, ...] = field(default=(), repr=False)  # logged once at startup
    config_file: str = field(default="", repr=False)  # the file loaded, read again on SIGHUP
    flag_overrides: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the flags, kept for reloads

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None,
             config_file: str | None = None) -> Settings:
        """Defaults < config file < ``LLMRPC_*`` env < explicit overrides (CLI flags)."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        proxy: ProxyConfig | None = None
        warnings: list[str] = []
        path = config_file or environ.get("LLMRPC_CONFIG")
        if path:
            document = load_document(path)
            if is_proxy_config(document):
                proxy = parse_proxy_config(document, environ, source=path)
                from .deployments import DeploymentTable  # here: deployments needs the request protos

                DeploymentTable.from_config(proxy)  # each deployment's base, key and extras are usable
                implied, warnings = proxy_settings(proxy)
                values.update(implied)
                warnings = [*proxy.warnings, *warnings]
                # environment_variables fill the provider env snapshot; the real environment wins.
                environ = {**proxy.environment_variables, **environ}
            elif isinstance(document, Mapping):
                values.update(document)
            else:
                raise ConfigError("", f"{path}: expected a mapping of settings or a LiteLLM proxy config")
        values.update(_from_env(environ))
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        proxies_from_env(environ)  # an unusable HTTPS_PROXY is a bad setting, reported at startup
        flags = {k: v for k, v in (overrides or {}).items() if v is not None}
        base = cls(env=environ, proxy=proxy, config_warnings=tuple(warnings), config_file=path or "",
                   flag_overrides=flags)
        settings = replace(base, **_coerce(values))
        if settings.fetch_media not in FETCH_MODES:
            raise ValueError(f"fetch_media must be public, all or off, not {settings.fetch_media!r}")
        if settings.client_api_base not in API_BASE_MODES:
            raise ValueError(f"client_api_base must be any, public or off, not {settings.client_api_base!r}")
        settings.egress_policy()  # an unusable allow prefix is a bad setting too
        if settings.redis_failure not in ("fail-open", "fail-closed"):
            raise ValueError(f"redis_failure must be fail-open or fail-closed, not {settings.redis_failure!r}")
        if settings.redis_url and not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        if settings.redis_timeout <= 0:
            raise ValueError(f"redis_timeout must be positive, not {settings.redis_timeout!r}")
        return settings

    def egress_policy(self) -> EgressPolicy:
        """The ``client_api_base`` settings as the policy the pipeline applies."""
        return EgressPolicy(self.client_api_base, tuple(p.strip() for p in self.client_api_base_allow if p.strip()))


# Loaded, not user-facing settings.
_INTERNAL = frozenset({"env", "proxy", "config_warnings", "config_file", "flag_overrides"})


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(Settings):
        key = f"LLMRPC_{f.name.upper()}"
        if key in environ and f.name not in _INTERNAL:
            out[f.name] = environ[key]
    return out


def _coerce(values: Mapping[str, Any]) -> dict[str, Any]:
    """Parse env strings into each field's type."""
    types = {f.name: f.type for f in fields(Settings)}
    out: dict[str, Any] = {}
    for name, raw in values.items():
        if name not in types or name in _INTERNAL:
            raise ValueError(f"unknown setting {name!r}")
        kind = str(types[name])
        if isinstance(raw, str) and kind == "bool":
            out[name] = raw.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(raw, str) and kind in ("int", "float"):
            out[name] = int(raw) if kind == "int" else float(raw)
        elif kind.startswith("tuple"):
            out[name] = tuple(raw.split(",") if isinstance(raw, str) else raw)
        elif kind.startswith("Mapping") and isinstance(raw, str):
            out[name] = _mapping(json.loads(raw))
        elif kind.startswith("Mapping"):
            out[name] = _mapping(raw)
        else:
            out[name] = raw
    return out


def _mapping(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def setting_fields() -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) of every user-facing setting, for the CLI and the docs."""
    out = []
    for f in fields(Settings):
        if f.name in _INTERNAL:
            continue
        default = f.default_factory() if callable(f.default_factory) else f.default
        out.append((f.name, str(f.type), default, f.metadata.get("help", "")))
    return out
