"""llmrpc: ``litellm.completion()``, answered by an llmrpc gRPC gateway.

    import llmrpc

    response = llmrpc.completion(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    print(response.choices[0].message.content)

Responses, stream chunks and exceptions have LiteLLM's names and shapes; the
exceptions subclass ``openai``'s. The gateway address comes from
``client=llmrpc.Client("host:port")`` or ``$LLMRPC_SERVER`` (default ``localhost:50051``).
"""

from . import exceptions
from ._callbacks import failure_callback, success_callback
from ._chunk_builder import stream_chunk_builder
from ._client import Client, acompletion, completion, get_supported_openai_params
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
from .exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    AuthenticationError,
    BadGatewayError,
    BadRequestError,
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

__version__ = "0.1.0"

# LiteLLM's private helper that its docs use (`litellm._should_retry(e.status_code)`), same name here.
_should_retry = exceptions.should_retry

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APITimeoutError",
    "AsyncCustomStreamWrapper",
    "AuthenticationError",
    "BadGatewayError",
    "BadRequestError",
    "ChatCompletionDeltaToolCall",
    "ChatCompletionMessageToolCall",
    "Choices",
    "Client",
    "CompletionTokensDetailsWrapper",
    "ConflictError",
    "ContentPolicyViolationError",
    "ContextWindowExceededError",
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
    "completion",
    "completion_cost",
    "failure_callback",
    "get_llm_provider",
    "get_model_info",
    "get_supported_openai_params",
    "model_cost",
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
]
