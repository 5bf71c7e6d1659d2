"""LiteLLM's response helpers and import paths: ``response.json()`` is a dict, ``to_dict()`` /
``to_json()`` exist on responses, chunks and usage, and ``llmrpc.types.utils`` holds the types."""

from __future__ import annotations

import json
from collections.abc import Iterator

import llmrpc
import pytest

from tests.support import GatewayThread

MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def client(mock_gateway: GatewayThread) -> Iterator[llmrpc.Client]:
    with llmrpc.Client(mock_gateway.address) as c:
        yield c


def test_json_is_a_dict_and_to_dict_to_json_exist(client: llmrpc.Client) -> None:
    response = client.completion(model="mock/echo", messages=MESSAGES, mock_response="hello")
    assert isinstance(response, llmrpc.ModelResponse)
    data = response.json()
    assert isinstance(data, dict) and data == response.model_dump()
    assert data["choices"][0]["message"]["content"] == "hello"
    assert response.to_dict() == data and json.loads(response.to_json()) == json.loads(response.model_dump_json())
    assert response.to_json().startswith("{\n  ")  # indented, as the openai SDK's
    assert response.to_json(indent=None) == response.model_dump_json()
    assert response.usage.to_dict()["total_tokens"] == response.usage.total_tokens
    assert "logprobs" not in response.choices[0].to_dict()  # omitted when unset, as in model_dump()
    assert response.to_dict(exclude_none=True)["choices"][0]["message"] == {"content": "hello", "role": "assistant"}


def test_stream_chunks_have_the_helpers(client: llmrpc.Client) -> None:
    stream = client.completion(model="mock/echo", messages=MESSAGES, mock_response="a b", stream=True,
                               stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(isinstance(chunk.json(), dict) and json.loads(chunk.to_json()) == chunk.to_dict() for chunk in chunks)
    assert chunks[-1].to_dict()["usage"]["completion_tokens"] > 0


def test_litellm_import_paths() -> None:
    from llmrpc.types import utils

    for name in utils.__all__:
        assert getattr(utils, name) is getattr(llmrpc, name), name
    from llmrpc.types.utils import Choices, Delta, Message, ModelResponse, StreamingChoices, Usage

    assert (ModelResponse, Usage, Choices, Message, Delta, StreamingChoices) == (
        llmrpc.ModelResponse, llmrpc.Usage, llmrpc.Choices, llmrpc.Message, llmrpc.Delta, llmrpc.StreamingChoices)
    from llmrpc.caching import Cache
    from llmrpc.caching.caching import Cache as CacheToo
    from llmrpc.integrations.custom_logger import CustomLogger

    assert Cache is CacheToo is llmrpc.Cache and CustomLogger is llmrpc.CustomLogger
