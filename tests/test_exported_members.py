"""The public surface of the llmrpc client package (httpx's test_exported_members)."""

from __future__ import annotations

import importlib
import inspect

import llmrpc

PUBLIC = {
    # functions
    "completion", "acompletion", "get_supported_openai_params", "stream_chunk_builder", "list_models",
    # model knowledge, answered by the gateway
    "token_counter", "get_model_info", "model_cost", "get_llm_provider", "completion_cost",
    "supports_function_calling", "supports_parallel_function_calling", "supports_tool_choice", "supports_vision",
    "supports_reasoning", "supports_response_schema", "supports_prompt_caching", "supports_system_messages",
    "supports_web_search", "supports_audio_input", "supports_audio_output", "supports_pdf_input",
    # local callbacks (LiteLLM's module-level lists) and LiteLLM's other honoured module settings
    "success_callback", "failure_callback", "input_callback", "callbacks", "CustomLogger", "Cache", "cache",
    "drop_params", "num_retries", "api_base", "api_key", "api_version", "request_timeout", "set_verbose",
    "send_local_provider_keys", "enable_cache", "update_cache", "disable_cache",
    # client and streams
    "Client", "CustomStreamWrapper", "AsyncCustomStreamWrapper",
    # response types
    "ModelResponse", "ModelResponseStream", "Choices", "StreamingChoices", "Message", "Delta", "Usage",
    "PromptTokensDetailsWrapper", "CompletionTokensDetailsWrapper", "ChatCompletionMessageToolCall",
    "ChatCompletionDeltaToolCall", "Function", "ServerToolUse",
    # exceptions
    "BadRequestError", "UnsupportedParamsError", "ContextWindowExceededError", "ContentPolicyViolationError",
    "AuthenticationError", "PermissionDeniedError", "NotFoundError", "ConflictError",
    "UnprocessableEntityError",
    "RateLimitError", "BudgetExceededError",
    "InternalServerError", "ServiceUnavailableError", "BadGatewayError", "Timeout",
    "APITimeoutError", "APIConnectionError", "APIError", "APIResponseValidationError",
    "__version__",
}  # fmt: skip


def test_all_is_the_public_surface() -> None:
    assert set(llmrpc.__all__) == PUBLIC
    assert llmrpc.__all__ == sorted(llmrpc.__all__)
    assert len(llmrpc.__all__) == len(set(llmrpc.__all__))


# LiteLLM's module settings whose default is None (unset).
UNSET_SETTINGS = {"cache", "num_retries", "api_base", "api_key", "api_version", "send_local_provider_keys"}


def test_all_members_exist() -> None:
    for name in llmrpc.__all__:
        assert hasattr(llmrpc, name), name
        assert getattr(llmrpc, name) is not None or name in UNSET_SETTINGS, name


def test_no_unlisted_public_names() -> None:
    public = {
        name
        for name, value in vars(llmrpc).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public <= set(llmrpc.__all__)


def test_private_modules_reexported() -> None:
    for module_name in ("_types", "_streaming", "_chunk_builder"):
        module = importlib.import_module(f"llmrpc.{module_name}")
        for name in module.__all__:
            assert getattr(llmrpc, name) is getattr(module, name), name
    exceptions = importlib.import_module("llmrpc.exceptions")
    for name in exceptions.__all__:
        if name not in ("map_rpc_error", "should_retry"):
            assert getattr(llmrpc, name) is getattr(exceptions, name), name
    assert llmrpc._should_retry is exceptions.should_retry  # LiteLLM's name


def test_exceptions_module_docstring_draws_every_class() -> None:
    doc = llmrpc.exceptions.__doc__ or ""
    for name in llmrpc.exceptions.__all__:
        if name not in ("map_rpc_error", "APITimeoutError"):
            assert name in doc, name


def test_import_makes_no_channel() -> None:
    # Importing and building a Client must not touch the network: channels are lazy.
    client = llmrpc.Client("203.0.113.1:1")
    assert client._channel is None and client._stub is None
    client.close()
