"""``Client`` (channels to one gateway) and the module-level ``completion()`` family.

The functions take ``litellm.completion()``'s arguments, in its order. The
gateway address is not one of them (``base_url`` / ``api_base`` name the
*upstream* API, as in LiteLLM): it comes from ``client=Client(...)``, else the
``LLMRPC_SERVER`` environment variable, else ``localhost:50051``; TLS from ``Client(tls=...)``,
else the ``LLMRPC_TLS*`` variables (see ``_tls``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import grpc
import httpx

from . import _callbacks
from ._callbacks import with_trace
from ._convert import _model_name, build_request, stream_options_to_proto
from ._decode import response_from_proto
from ._streaming import AsyncCustomStreamWrapper, CustomStreamWrapper
from ._tls import PemSource, channel_credentials, tls_env_key
from ._types import ModelResponse
from .exceptions import map_rpc_error
from .v1 import completion_service_pb2, completion_service_pb2_grpc

if TYPE_CHECKING:  # the async stub is a typing-only class of the generated .pyi
    from .v1.completion_service_pb2_grpc import CompletionServiceAsyncStub, CompletionServiceStub

__all__ = ["DEFAULT_TARGET", "Client", "acompletion", "completion", "get_supported_openai_params"]

DEFAULT_TARGET = "localhost:50051"
_MIB = 1024 * 1024
DEFAULT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", 64 * _MIB),
    ("grpc.max_receive_message_length", 64 * _MIB),
    ("grpc.keepalive_time_ms", 30_000),
)
# The gRPC deadline trails the caller's timeout so the gateway, which enforces
# the timeout itself, gets to report PROVIDER_TIMEOUT with its details first.
_DEADLINE_SLACK_S = 5.0
_PARAMS_DEADLINE_S = 30.0
_BACKGROUND: set[asyncio.Task[None]] = set()  # keeps channel-closing tasks alive until done


@dataclass(frozen=True)
class _Call:
    """One prepared completion call."""

    model: str
    request: completion_service_pb2.CompleteRequest
    stream: bool
    stream_options: Mapping[str, Any] | None
    deadline: float | None

    def stream_request(self) -> completion_service_pb2.StreamCompleteRequest:
        request = completion_service_pb2.StreamCompleteRequest(request=self.request)
        if self.stream_options is not None:
            request.stream_options.CopyFrom(stream_options_to_proto(self.stream_options))
        return request


def _prepare(params: Mapping[str, Any]) -> _Call:
    request = build_request(params)  # validates timeout too: it is a request field
    timeout = params.get("timeout")
    return _Call(
        model=request.model,
        request=request,
        stream=bool(params.get("stream")),
        stream_options=params.get("stream_options"),
        deadline=None if timeout is None else float(timeout) + _DEADLINE_SLACK_S,
    )


def _collect(local_vars: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a completion() frame: named ones plus **kwargs, like LiteLLM's locals()."""
    params = {k: v for k, v in local_vars.items() if k not in ("self", "kwargs")}
    params.update(local_vars["kwargs"])
    return params


def _finish(pb: completion_service_pb2.CompleteResponse, started: float) -> ModelResponse:
    response = response_from_proto(pb)
    response._response_ms = (time.perf_counter() - started) * 1000
    return response


class Client:
    """Channels to one llmrpc gateway: one sync channel, one ``grpc.aio`` channel per event loop.

    :param target: ``host:port``; defaults to ``$LLMRPC_SERVER``, else ``localhost:50051``.
    :param credentials: ready-made ``grpc.ChannelCredentials``; replaces every TLS argument below.
    :param metadata: gRPC metadata sent with every call, e.g. ``[("authorization", "Bearer ...")]``.
    :param options: gRPC channel options.
    :param tls: ``True``: connect with TLS (server verified against ``root_certificates``, else the
        default roots); ``False``: plaintext, whatever the environment says; ``None`` (default): TLS
        when any PEM argument is given, else as ``LLMRPC_TLS=1`` says. With no PEM argument given,
        ``LLMRPC_TLS_CA``, ``LLMRPC_TLS_CERT`` and ``LLMRPC_TLS_KEY`` supply them (and turn TLS on).
    :param root_certificates: PEM CA bundle that signed the gateway's certificate.
    :param client_cert: PEM client certificate chain, for a gateway that requires one (mTLS).
    :param client_key: PEM private key of ``client_cert``.

    Each PEM argument is ``bytes`` or a ``str`` holding the PEM itself, or a file path
    (``str`` / ``os.PathLike``), read when the client is made.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS,
        tls: bool | None = None,
        root_certificates: PemSource | None = None,
        client_cert: PemSource | None = None,
        client_key: PemSource | None = None,
    ) -> None:
        self.target = target or os.environ.get("LLMRPC_SERVER") or DEFAULT_TARGET
        pems = {"root_certificates": root_certificates, "client_cert": client_cert, "client_key": client_key}
        if credentials is not None and (tls is not None or any(v is not None for v in pems.values())):
            raise ValueError("pass either credentials or tls/root_certificates/client_cert/client_key, not both")
        self._credentials = credentials if credentials is not None else channel_credentials(tls, pems, os.environ)
        self._metadata = tuple(metadata)
        self._options = tuple(options)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: CompletionServiceStub | None = None
        # grpc.aio channels are bound to the loop they were made on.
        self._aio: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[grpc.aio.Channel, CompletionServiceAsyncStub]
        ] = weakref.WeakKeyDictionary()
        self._closed = False

    def __repr__(self) -> str:
        return f"Client(target={self.target!r})"

    def _sync_stub(self) -> CompletionServiceStub:
        with self._lock:
            self._check_open()
            if self._stub is None:
                if self._credentials is None:
                    self._channel = grpc.insecure_channel(self.target, options=self._options)
                else:
                    self._channel = grpc.secure_channel(self.target, self._credentials, options=self._options)
                self._stub = completion_service_pb2_grpc.CompletionServiceStub(self._channel)
            return self._stub

    def _aio_stub(self) -> CompletionServiceAsyncStub:
        loop = asyncio.get_running_loop()
        with self._lock:
            self._check_open()
            entry = self._aio.get(loop)
            if entry is None:
                # A channel references its loop, so weak keys alone never free it.
                for dead in [other for other in self._aio if other.is_closed()]:
                    del self._aio[dead]
                if self._credentials is None:
                    channel = grpc.aio.insecure_channel(self.target, options=self._options)
                else:
                    channel = grpc.aio.secure_channel(self.target, self._credentials, options=self._options)
                # The .pyi's overload picks the async stub for a grpc.aio channel only where grpc itself
                # is typed; grpcio ships no types, so say it here.
                stub = cast("CompletionServiceAsyncStub", completion_service_pb2_grpc.CompletionServiceStub(channel))
                entry = self._aio[loop] = (channel, stub)
            return entry[1]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    def completion(
        self,
        model: str,
        messages: Iterable[Any] = (),
        timeout: float | str | httpx.Timeout | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        n: int | None = None,
        stream: bool | None = None,
        stream_options: dict[str, Any] | None = None,
        stop: str | list[str] | None = None,
        max_completion_tokens: int | None = None,
        max_tokens: int | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        logit_bias: dict[Any, int] | None = None,
        user: str | None = None,
        response_format: Any = None,
        seed: int | None = None,
        tools: list[Any] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        deployment_id: str | None = None,
        functions: list[Any] | None = None,
        function_call: str | dict[str, Any] | None = None,
        base_url: str | None = None,
        api_version: str | None = None,
        api_key: str | None = None,
        model_list: list[Any] | None = None,
        **kwargs: Any,
    ) -> ModelResponse | CustomStreamWrapper:
        """``litellm.completion()`` through this client's gateway (see :func:`llmrpc.completion`)."""
        return self._complete(_collect(locals()))

    async def acompletion(
        self,
        model: str,
        messages: Iterable[Any] = (),
        timeout: float | str | httpx.Timeout | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        n: int | None = None,
        stream: bool | None = None,
        stream_options: dict[str, Any] | None = None,
        stop: str | list[str] | None = None,
        max_completion_tokens: int | None = None,
        max_tokens: int | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        logit_bias: dict[Any, int] | None = None,
        user: str | None = None,
        response_format: Any = None,
        seed: int | None = None,
        tools: list[Any] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        deployment_id: str | None = None,
        functions: list[Any] | None = None,
        function_call: str | dict[str, Any] | None = None,
        base_url: str | None = None,
        api_version: str | None = None,
        api_key: str | None = None,
        model_list: list[Any] | None = None,
        **kwargs: Any,
    ) -> ModelResponse | AsyncCustomStreamWrapper:
        """``litellm.acompletion()`` through this client's gateway."""
        return await self._acomplete(_collect(locals()))

    @_callbacks.observed
    def _complete(self, params: Mapping[str, Any]) -> ModelResponse | CustomStreamWrapper:
        call = _prepare(params)
        stub = self._sync_stub()
        if call.stream:
            rpc = stub.StreamComplete(call.stream_request(), timeout=call.deadline, metadata=with_trace(self._metadata))
            return CustomStreamWrapper(rpc, model=call.model, target=self.target)._start()
        started = time.perf_counter()
        try:
            pb = stub.Complete(call.request, timeout=call.deadline, metadata=with_trace(self._metadata))
        except grpc.RpcError as err:
            raise map_rpc_error(err, model=call.model, target=self.target) from err
        return _finish(pb, started)

    @_callbacks.aobserved
    async def _acomplete(self, params: Mapping[str, Any]) -> ModelResponse | AsyncCustomStreamWrapper:
        call = _prepare(params)
        stub = self._aio_stub()
        if call.stream:
            rpc = stub.StreamComplete(call.stream_request(), timeout=call.deadline, metadata=with_trace(self._metadata))
            return await AsyncCustomStreamWrapper(rpc, model=call.model, target=self.target)._start()
        started = time.perf_counter()
        try:
            pb = await stub.Complete(call.request, timeout=call.deadline, metadata=with_trace(self._metadata))
        except grpc.RpcError as err:
            raise map_rpc_error(err, model=call.model, target=self.target) from err
        return _finish(pb, started)

    def get_supported_openai_params(self, model: str, custom_llm_provider: str | None = None) -> list[str]:
        """The OpenAI parameters the provider behind ``model`` accepts, sorted."""
        request = completion_service_pb2.GetSupportedParamsRequest(
            model=_model_name(model, custom_llm_provider)
        )
        try:
            pb = self._sync_stub().GetSupportedParams(
                request, timeout=_PARAMS_DEADLINE_S, metadata=with_trace(self._metadata)
            )
        except grpc.RpcError as err:
            raise map_rpc_error(
                err, model=request.model, target=self.target, method="GetSupportedParams"
            ) from err
        return list(pb.supported_params)

    def list_models(self) -> list[dict[str, Any]]:
        """The model names this gateway serves the caller (``ListModels``); see :func:`llmrpc.list_models`."""
        from ._discovery import list_models  # that module builds on this one

        return list_models(client=self)

    def close(self) -> None:
        """Close every channel. Streams still open on them fail."""
        with self._lock:
            self._closed = True
            channel, self._channel, self._stub = self._channel, None, None
            aio_channels = list(self._aio.items())
            self._aio.clear()
        if channel is not None:
            channel.close()
        for loop, (aio_channel, _) in aio_channels:
            _close_aio_channel(loop, aio_channel)

    async def aclose(self) -> None:
        """Close every channel, awaiting the close of this event loop's one."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._aio.pop(loop, None)
        self.close()
        if entry is not None:
            await entry[0].close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _close_aio_channel(loop: asyncio.AbstractEventLoop, channel: grpc.aio.Channel) -> None:
    # grpc.aio's close() is a coroutine that must run on the channel's own loop.
    if loop.is_closed():
        return
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        task = loop.create_task(channel.close())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
    elif loop.is_running():
        asyncio.run_coroutine_threadsafe(channel.close(), loop)


_DEFAULT_CLIENTS: dict[tuple[str | None, ...], Client] = {}
_DEFAULT_LOCK = threading.Lock()


def _client_for(params: dict[str, Any]) -> Client:
    """The ``client=`` argument, else the shared client of ``$LLMRPC_SERVER``'s address."""
    client = params.pop("client", None)
    if client is not None:
        if not isinstance(client, Client):
            raise TypeError(f"client must be an llmrpc.Client, got {type(client).__name__}")
        return client
    target = os.environ.get("LLMRPC_SERVER") or DEFAULT_TARGET
    key = (target, *tls_env_key(os.environ))  # the LLMRPC_TLS* variables configure the shared client too
    with _DEFAULT_LOCK:
        if key not in _DEFAULT_CLIENTS:
            _DEFAULT_CLIENTS[key] = Client(target)
        return _DEFAULT_CLIENTS[key]


def completion(
    model: str,
    messages: Iterable[Any] = (),
    timeout: float | str | httpx.Timeout | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    n: int | None = None,
    stream: bool | None = None,
    stream_options: dict[str, Any] | None = None,
    stop: str | list[str] | None = None,
    max_completion_tokens: int | None = None,
    max_tokens: int | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    logit_bias: dict[Any, int] | None = None,
    user: str | None = None,
    response_format: Any = None,
    seed: int | None = None,
    tools: list[Any] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    parallel_tool_calls: bool | None = None,
    logprobs: bool | None = None,
    top_logprobs: int | None = None,
    deployment_id: str | None = None,
    functions: list[Any] | None = None,
    function_call: str | dict[str, Any] | None = None,
    base_url: str | None = None,
    api_version: str | None = None,
    api_key: str | None = None,
    model_list: list[Any] | None = None,
    **kwargs: Any,
) -> ModelResponse | CustomStreamWrapper:
    """``litellm.completion()``, answered by the llmrpc gateway.

    Returns a ``ModelResponse``, or a ``CustomStreamWrapper`` of ``ModelResponseStream``
    chunks when ``stream=True``. Besides the named arguments it understands LiteLLM's
    ``api_base, reasoning_effort, thinking, modalities, audio, service_tier, store,
    caching, cache, num_retries, mock_response, drop_params, metadata, extra_headers,
    extra_body, fallbacks, context_window_fallbacks, content_policy_fallbacks,
    prediction, custom_llm_provider, request_timeout`` and ``client`` (an :class:`llmrpc.Client`);
    any other keyword (``top_k=40``) is sent upstream in ``extra_body``. ``timeout`` takes
    seconds, a numeric string or an ``httpx.Timeout`` (its read timeout), as LiteLLM does.
    LiteLLM's module settings on ``llmrpc`` (``cache``, ``drop_params``, ``num_retries``,
    ``api_base``, ``api_key``, ``request_timeout``...) are the defaults of every call.
    ``model_list`` (LiteLLM's deployment list) makes the gateway route this one call over those
    deployments, retrying on another one when one fails. Errors raise :mod:`llmrpc.exceptions` classes.
    """
    params = _collect(locals())
    return _client_for(params)._complete(params)


async def acompletion(
    model: str,
    messages: Iterable[Any] = (),
    timeout: float | str | httpx.Timeout | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    n: int | None = None,
    stream: bool | None = None,
    stream_options: dict[str, Any] | None = None,
    stop: str | list[str] | None = None,
    max_completion_tokens: int | None = None,
    max_tokens: int | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    logit_bias: dict[Any, int] | None = None,
    user: str | None = None,
    response_format: Any = None,
    seed: int | None = None,
    tools: list[Any] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    parallel_tool_calls: bool | None = None,
    logprobs: bool | None = None,
    top_logprobs: int | None = None,
    deployment_id: str | None = None,
    functions: list[Any] | None = None,
    function_call: str | dict[str, Any] | None = None,
    base_url: str | None = None,
    api_version: str | None = None,
    api_key: str | None = None,
    model_list: list[Any] | None = None,
    **kwargs: Any,
) -> ModelResponse | AsyncCustomStreamWrapper:
    """``litellm.acompletion()``: :func:`completion` on ``grpc.aio``; streams are ``async for``."""
    params = _collect(locals())
    return await _client_for(params)._acomplete(params)


def get_supported_openai_params(
    model: str, custom_llm_provider: str | None = None, *, client: Client | None = None
) -> list[str]:
    """``litellm.get_supported_openai_params()``, answered by the gateway."""
    return _client_for({"client": client}).get_supported_openai_params(model, custom_llm_provider)
