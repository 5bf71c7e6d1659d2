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
    "BudgetExceededError",
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
    "failure_callback",
    "get_supported_openai_params",
    "stream_chunk_builder",
    "success_callback",
]
