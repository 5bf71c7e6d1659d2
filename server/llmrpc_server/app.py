"""Build and run the gRPC server: health, reflection, graceful shutdown, several processes.

The server, the HTTP client pool and every channel are created inside the running loop (grpc.aio
objects are loop-bound, grpc/grpc#32480). SIGTERM/SIGINT flip health to NOT_SERVING so load
balancers drain, keep serving for ``drain_delay`` seconds while they notice, then ``server.stop(grace)``
lets in-flight calls finish and refuses new ones.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from llmrpc.v1 import completion_service_pb2 as pb

from .backend import Backend
from .cache.backend import CachingBackend
from .cache.store import CacheStore, ResponseCache
from .config import Settings
from .discovery import ModelFilter
from .egress import proxies_from_env
from .executor import Executor
from .health import DrainingHealthServicer
from .interceptors import build_interceptors
from .keys import (
    KeyedBackend,
    KeyGuard,
    LimitStore,
    SqliteLimitStore,
    configured_keys,
    current_key_alias,
    current_model_filter,
    state_path,
)
from .observability.backend import ObservedBackend
from .observability.counters import Counters
from .observability.otel import Telemetry, configure
from .pipeline import Pipeline
from .pricing import load_price_table
from .protected import bearer_tokens, startup_warnings
from .providers import default_adapters, transports
from .reload import Reloader
from .resolve import Resolver
from .router import Router
from .service import CompletionService, add_to_server
from .tls import load_listener_tls

if TYPE_CHECKING:
    from .shared import RedisLimitStore, SharedState

__all__ = ["SERVICE_NAME", "Gateway", "run", "start_gateway"]

log = logging.getLogger("llmrpc_server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CompletionService"].full_name


@dataclass
class Gateway:
    """A running server and the resources it owns."""

    server: grpc.aio.Server
    port: int
    health: DrainingHealthServicer
    executor: Executor
    settings: Settings
    caching: CachingBackend | None = None
    observed: ObservedBackend | None = None
    telemetry: Telemetry | None = None
    counters: Counters = field(default_factory=Counters)  # this gateway's resilience counters
    reloader: Reloader | None = None  # SIGHUP reloads the config file through it
    limits: SqliteLimitStore | RedisLimitStore | None = None  # virtual keys' counters, when keys are configured
    shared: SharedState | None = None  # the Redis-backed stores (--redis-url)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING first, then let in-flight calls finish within ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.health.watches_ended(timeout=2.0)
        await self.server.stop(self.settings.grace if grace is None else grace)
        if self.caching is not None:
            await self.caching.close()
        if self.observed is not None:
            await self.observed.close()
        if self.telemetry is not None:
            self.telemetry.shutdown()
        if self.limits is not None:
            self.limits.close()
        if self.shared is not None:
            await self.shared.close()
        await self.executor.close()


def _key_model_filter(context: grpc.aio.ServicerContext) -> ModelFilter | None:
    """Discovery shows a virtual key only its ``models`` (the key is set in the RPC's context)."""
    return current_model_filter()


def _server_options(settings: Settings) -> list[tuple[str, int]]:
    size = settings.max_message_mb * 1024 * 1024
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        # Long unary generations send no DATA frames: allow client keepalive pings meanwhile.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
        # One process must fail on a taken port; several share it on purpose.
        ("grpc.so_reuseport", 1 if settings.workers != 1 else 0),
    ]


async def start_gateway(settings: Settings, telemetry: Telemetry | None = None) -> Gateway:
    """Create, wire and start everything inside the running loop (``telemetry``: the OTel providers,
    by default from the ``OTEL_*`` environment, see ``observability.otel``)."""
    tls = load_listener_tls(settings)  # first: a bad --tls-* file must fail before anything is opened
    keys = configured_keys(settings)  # ... and so must a bad keys: section
    adapters = default_adapters(settings.env)
    executor = Executor(max_connections=settings.max_connections, connect_timeout=settings.connect_timeout,
                        proxies=proxies_from_env(settings.env),
                        max_connections_per_host=settings.max_connections_per_host,
                        stream_idle_timeout=settings.stream_idle_timeout, transports=transports(adapters))
    await executor.start()
    # The chain, innermost first; each call's route is resolved once, by whichever layer asks first
    # (the cache for its key, else the pipeline), through the Call the service makes with `resolver`.
    resolver = Resolver(Router(adapters, settings.env, settings.aliases), settings)
    pipeline = Pipeline(executor, settings)
    shared = _shared_state(settings, pipeline.counters)
    cache: CacheStore = (shared.cache if shared is not None
                         else ResponseCache(settings.cache_path, int(settings.cache_max_mb * 1024 * 1024)))
    caching = CachingBackend(pipeline, cache, settings)
    service = CompletionService(caching, resolver, settings,  # its backend is set below
                                model_filter=_key_model_filter if keys else None)
    reloader = Reloader(settings, [resolver, pipeline, caching, service, *([keys] if keys else [])],
                        state=shared.router if shared is not None else None)
    resolver.table = reloader.table
    backend: Backend = caching
    telemetry = telemetry or configure(settings)
    backend = observed = ObservedBackend(backend, settings, telemetry, pipeline.counters,
                                         cache_stats=cache.stats, key_alias=current_key_alias)
    limits: SqliteLimitStore | RedisLimitStore | None = None
    if keys:
        limits = shared.limits() if shared is not None else SqliteLimitStore(state_path(settings))
    if limits is not None:
        store: LimitStore = limits
        backend = KeyedBackend(backend, store)  # outermost: a refused call costs nothing below it
    server = grpc.aio.server(
        interceptors=build_interceptors(settings, telemetry.tracer_provider, keys),
        options=_server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    service.set_backend(backend)
    add_to_server(service, server, KeyGuard(bearer_tokens(settings), keys).wrap if keys else None)
    health = DrainingHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    address = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    if port == 0:
        await executor.close()
        raise OSError(f"cannot listen on {settings.host}:{settings.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Gateway(server, port, health, executor, settings, caching, observed, telemetry, pipeline.counters,
                   reloader, limits, shared)


def _shared_state(settings: Settings, counters: Counters) -> SharedState | None:
    """The Redis-backed stores when ``--redis-url`` is set (only then is the redis client imported)."""
    if not settings.redis_url:
        return None
    try:
        from .shared import shared_state
    except ImportError as exc:  # a server install always has it; a hand-made environment may not
        raise SystemExit(f"llmrpc-server: --redis-url needs the redis package (pip install 'llmrpc[server]'): "
                         f"{exc}") from None

    shared = shared_state(settings, counters)
    log.info("shared state in Redis at %s (on failure: %s)", shared.link.url, settings.redis_failure)
    return shared


async def _serve(settings: Settings) -> None:
    load_price_table()
    gateway = await start_gateway(settings)
    if gateway.reloader is not None:  # before "listening": whoever waits for that line may send SIGHUP
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, gateway.reloader.reload)
    log.info("llmrpc-server listening on %s:%d%s (pid %d)", settings.host, gateway.port,
             (" with mTLS" if settings.tls_client_ca else " with TLS") if settings.tls_cert else "", os.getpid())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if settings.drain_delay > 0:
        # A balancer only stops sending calls once a health check sees NOT_SERVING; until then keep
        # serving them, since grpc cancels the calls that arrive after server.stop() has begun.
        await gateway.health.enter_graceful_shutdown()
        log.info("shutting down: NOT_SERVING, still serving for %.1fs", settings.drain_delay)
        await asyncio.sleep(settings.drain_delay)
    log.info("shutting down: draining for up to %.0fs", settings.grace)
    await gateway.stop()


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run_worker(settings: Settings) -> None:
    _configure_logging(settings)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop's reload handler is installed
    try:
        import uvloop

        uvloop.run(_serve(settings))
    except ImportError:  # pragma: no cover - uvloop is a server dependency except on Windows
        asyncio.run(_serve(settings))


def _worker_settings(settings: Settings, workers: int, index: int) -> Settings:
    """Worker ``index`` of ``workers``: the shared gRPC port, its own metrics port (``metrics_port +
    index``), since each process has its own counters and a scrape must reach every one of them."""
    metrics_port = settings.metrics_port + index if settings.metrics_port else 0
    return replace(settings, workers=workers, metrics_port=metrics_port)


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT; with ``workers`` > 1, that many processes share the port."""
    _configure_logging(settings)
    try:
        load_listener_tls(settings)  # once, before any worker starts, so a bad file is one clear error
        configured_keys(settings)  # likewise a bad keys: section
    except ValueError as exc:
        raise SystemExit(f"llmrpc-server: bad setting: {exc}") from None
    for warning in (*settings.config_warnings, *startup_warnings(settings)):  # once for all workers
        log.warning("%s", warning)
    workers = settings.workers or os.cpu_count() or 1
    if workers == 1:
        _run_worker(settings)
        return
    if settings.port == 0:
        raise SystemExit("--workers > 1 needs a fixed --port")
    # spawn, never fork: no gRPC object may cross a fork (grpc/grpc#13873).
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_run_worker, args=(_worker_settings(settings, workers, i),)) for i in range(workers)]
    def forward(*_: object) -> None:
        for proc in procs:
            proc.terminate()

    def forward_hup(*_: object) -> None:  # each worker reloads its own copy of the config
        for proc in procs:
            if proc.pid is not None:
                os.kill(proc.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward_hup)
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        for proc in procs:
            proc.join()
