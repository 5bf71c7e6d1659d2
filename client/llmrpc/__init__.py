"""llmrpc: ``litellm.completion()``, answered by an llmrpc gRPC gateway.

    import llmrpc

    response = llmrpc.completion(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    print(response.choices[0].message.content)

Responses, stream chunks and exceptions have LiteLLM's names and shapes; the
exceptions subclass ``openai``'s. The gateway address comes from
``client=llmrpc.Client("host:port")`` or ``$LLMRPC_SERVER`` (default ``localhost:50051``).
"""

from . import _settings, exceptions
from . import caching as caching  # LiteLLM's import paths: llmrpc.caching.caching.Cache,
from . import integrations as integrations  # llmrpc.integrations.custom_logger.CustomLogger,
from . import types as types  # llmrpc.types.utils.ModelResponse
from ._callbacks import callbacks, failure_callback, input_callback, success_callback
from ._chunk_builder import stream_chunk_builder
from ._client import Client, acompletion, completion, get_supported_openai_params
from ._discovery import list_models
from ._model_info import (
    completion_cost,
    get_llm_provider,
    get_model_info,
    model_cost,
    supports_audio_input,
    supports_audio_output,
    supports_function_calling,
    supports_parallel_function_calling,
    supports_pdf_input,
    supports_prompt_caching,
    supports_reasoning,
    supports_response_schema,
    supports_system_messages,
    supports_tool_choice,
    supports_vision,
    supports_web_search,
    token_counter,
)
from ._streaming import AsyncCustomStreamWrapper, CustomStreamWrapper
from ._types import (
    ChatCompletionDeltaToolCall,
    ChatCompletionMessageToolCall,
    Choices,
    CompletionTokensDetailsWrapper,
    Delta,
    Function,
    Message,
    ModelResponse,
    ModelResponseStream,
    PromptTokensDetailsWrapper,
    ServerToolUse,
    StreamingChoices,
    Usage,
)
from .caching.caching import Cache, disable_cache, enable_cache, update_cache
from .exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    AuthenticationError,
    BadGatewayError,
    BadRequestError,
    BudgetExceededError,
    ConflictError,
    ContentPolicyViolationError,
    ContextWindowExceededError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    Timeout,
    UnprocessableEntityError,
    UnsupportedParamsError,
)
from .integrations.custom_logger import CustomLogger

__version__ = "0.1.0"

# LiteLLM's module-level settings that llmrpc honours; any other LiteLLM setting assigned here warns
# once (see _settings). Call defaults apply only once assigned, so the gateway's own defaults hold.
cache: Cache | None = None
drop_params: bool = False
num_retries: int | None = None
api_base: str | None = None
api_key: str | None = None
api_version: str | None = None
request_timeout: float = 6000.0  # LiteLLM's value; sent as the timeout only once assigned
set_verbose: bool = False
# Send this process's own provider key (OPENAI_API_KEY for openai/...) as api_key; None: $LLMRPC_SEND_LOCAL_KEYS.
send_local_provider_keys: bool | None = None

# LiteLLM's private helper that its docs use (`litellm._should_retry(e.status_code)`), same name here.
_should_retry = exceptions.should_retry
_turn_on_debug = _settings.turn_on_debug  # LiteLLM's litellm._turn_on_debug()

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APITimeoutError",
    "AsyncCustomStreamWrapper",
    "AuthenticationError",
    "BadGatewayError",
    "BadRequestError",
    "BudgetExceededError",
    "Cache",
    "ChatCompletionDeltaToolCall",
    "ChatCompletionMessageToolCall",
    "Choices",
    "Client",
    "CompletionTokensDetailsWrapper",
    "ConflictError",
    "ContentPolicyViolationError",
    "ContextWindowExceededError",
    "CustomLogger",
    "CustomStreamWrapper",
    "Delta",
    "Function",
    "InternalServerError",
    "Message",
    "ModelResponse",
    "ModelResponseStream",
    "NotFoundError",
    "PermissionDeniedError",
    "PromptTokensDetailsWrapper",
    "RateLimitError",
    "ServerToolUse",
    "ServiceUnavailableError",
    "StreamingChoices",
    "Timeout",
    "UnprocessableEntityError",
    "UnsupportedParamsError",
    "Usage",
    "__version__",
    "acompletion",
    "api_base",
    "api_key",
    "api_version",
    "cache",
    "callbacks",
    "completion",
    "completion_cost",
    "disable_cache",
    "drop_params",
    "enable_cache",
    "failure_callback",
    "get_llm_provider",
    "get_model_info",
    "get_supported_openai_params",
    "input_callback",
    "list_models",
    "model_cost",
    "num_retries",
    "request_timeout",
    "send_local_provider_keys",
    "set_verbose",
    "stream_chunk_builder",
    "success_callback",
    "supports_audio_input",
    "supports_audio_output",
    "supports_function_calling",
    "supports_parallel_function_calling",
    "supports_pdf_input",
    "supports_prompt_caching",
    "supports_reasoning",
    "supports_response_schema",
    "supports_system_messages",
    "supports_tool_choice",
    "supports_vision",
    "supports_web_search",
    "token_counter",
    "update_cache",
]

_settings.install(__name__)
