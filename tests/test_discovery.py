"""Discovery: ListModels and GetModelInfo for config model groups, aliases and wildcards, through
the real server (raw stub, thin client, grpcurl), and the allowlist hook virtual keys will fill."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import llmrpc
import pytest
import yaml
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc
from llmrpc_server.config import Settings
from llmrpc_server.deployment_state import LocalDeploymentState
from llmrpc_server.discovery import list_models
from llmrpc_server.providers import default_adapters
from llmrpc_server.reload import build_table
from llmrpc_server.router import Router

from tests.support import GatewayThread
from tests.test_grpcurl import grpcurl

CONFIG: dict[str, Any] = {
    "model_list": [
        {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_base": "http://127.0.0.1:9/v1",
                                                 "api_key": "sk-secret-a"},
         "model_info": {"id": "eu", "max_input_tokens": 64000, "description": "EU region"}},
        {"model_name": "gpt", "litellm_params": {"model": "azure/gpt-4o-us", "api_base": "http://127.0.0.1:9",
                                                 "api_key": "sk-secret-b", "api_version": "2024-06-01"},
         "model_info": {"id": "us"}},
        {"model_name": "anthropic/*", "litellm_params": {"model": "anthropic/*", "api_key": "sk-secret-c"}},
        {"model_name": "cheap", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-secret-d"},
         "model_info": {"input_cost_per_token": 1e-9, "supports_vision": False}},
    ],
    "router_settings": {"model_group_alias": {"gpt-4": "gpt"}},
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    path = tmp_path_factory.mktemp("discovery") / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    loaded = Settings.load({"aliases": '{"fast": "openai/gpt-4.1-nano"}'}, environ={}, config_file=str(path))
    return replace(loaded, host="127.0.0.1", port=0, grace=0.5, cache_path=":memory:")


@pytest.fixture(scope="module")
def gateway(settings: Settings) -> Iterator[GatewayThread]:
    with GatewayThread(settings) as gw:
        yield gw


@pytest.fixture
def stub(gateway: GatewayThread) -> Iterator[pb_grpc.CompletionServiceStub]:
    with grpc.insecure_channel(gateway.address) as channel:
        yield pb_grpc.CompletionServiceStub(channel)


def test_list_models_names_groups_aliases_and_wildcards(stub: pb_grpc.CompletionServiceStub) -> None:
    models = {m.key: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert list(models) == ["gpt", "cheap", "anthropic/*", "gpt-4", "fast"]
    gpt = models["gpt"]
    assert (gpt.provider, gpt.provider_model, gpt.mode) == ("openai", "gpt-4o", "chat")
    assert list(gpt.deployments) == ["eu", "us"]
    assert gpt.max_input_tokens == 64000  # the config's model_info wins over the price table
    assert gpt.input_cost_per_token > 0 and gpt.output_cost_per_token > gpt.input_cost_per_token  # genai-prices
    assert gpt.config_model_info["description"] == "EU region"
    assert models["gpt-4"].alias_of == "gpt" and list(models["gpt-4"].deployments) == ["eu", "us"]
    assert models["anthropic/*"].wildcard and models["anthropic/*"].provider == "anthropic"
    assert models["cheap"].input_cost_per_token == pytest.approx(1e-9) and not models["cheap"].supports_vision
    assert models["fast"].alias_of == "openai/gpt-4.1-nano" and models["fast"].provider == "openai"
    assert "sk-secret" not in str(stub.ListModels(pb.ListModelsRequest(), timeout=10))


def test_get_model_info_for_a_group_an_alias_and_a_wildcard_match(stub: pb_grpc.CompletionServiceStub) -> None:
    gpt = stub.GetModelInfo(pb.GetModelInfoRequest(model="gpt"), timeout=10).model_info
    assert (gpt.key, gpt.provider, gpt.provider_model, list(gpt.deployments)) == ("gpt", "openai", "gpt-4o",
                                                                                   ["eu", "us"])
    alias = stub.GetModelInfo(pb.GetModelInfoRequest(model="gpt-4"), timeout=10).model_info
    assert alias.alias_of == "gpt" and alias.provider_model == "gpt-4o"
    matched = stub.GetModelInfo(pb.GetModelInfoRequest(model="anthropic/claude-sonnet-4-5"), timeout=10).model_info
    assert (matched.provider, matched.provider_model) == ("anthropic", "claude-sonnet-4-5")
    assert matched.HasField("max_input_tokens") and matched.supports_reasoning
    # A name outside the config keeps the ordinary provider/model answer.
    plain = stub.GetModelInfo(pb.GetModelInfoRequest(model="openai/gpt-4o-mini"), timeout=10).model_info
    assert plain.provider == "openai" and not plain.deployments


def test_thin_client_lists_models_and_reads_group_info(gateway: GatewayThread) -> None:
    with llmrpc.Client(gateway.address) as client:
        listed = client.list_models()
        assert [m["key"] for m in listed] == ["gpt", "cheap", "anthropic/*", "gpt-4", "fast"]
        assert listed[0]["deployments"] == ["eu", "us"] and listed[0]["model_info"]["id"] == "eu"
        assert llmrpc.list_models(client=client) == listed
        info = llmrpc.get_model_info("gpt-4", client=client)
    assert info["litellm_provider"] == "openai" and info["max_input_tokens"] == 64000


def test_grpcurl_shows_list_models(gateway: GatewayThread) -> None:
    out = grpcurl(gateway.address, "llmrpc.v1.CompletionService/ListModels", body={})
    assert out.returncode == 0, out.stderr
    keys = [m["key"] for m in json.loads(out.stdout)["models"]]
    assert keys == ["gpt", "cheap", "anthropic/*", "gpt-4", "fast"]
    described = grpcurl(gateway.address, "describe", "llmrpc.v1.CompletionService")
    rpc = "rpc ListModels ( .llmrpc.v1.ListModelsRequest ) returns ( .llmrpc.v1.ListModelsResponse )"
    assert rpc in described.stdout


def test_allowlist_hook_filters_the_names(settings: Settings) -> None:
    """What virtual keys plug in: a predicate over public names."""
    router = Router(default_adapters(settings.env), settings.env, settings.aliases)
    table = build_table(settings, LocalDeploymentState())
    allowed = {"gpt", "anthropic/*"}
    names = [m.key for m in list_models(table, router, settings.aliases, settings.env, allowed=allowed.__contains__)]
    assert names == ["gpt", "anthropic/*"]


def test_without_a_config_the_list_has_aliases_and_keyed_providers(tmp_path: Path) -> None:
    settings = Settings(host="127.0.0.1", port=0, grace=0.5, cache_path=":memory:",
                        env={"OPENAI_API_KEY": "sk-x"}, aliases={"fast": "openai/gpt-4o-mini"})
    with GatewayThread(settings) as gw, llmrpc.Client(gw.address) as client:
        keys = [m["key"] for m in client.list_models()]
    assert keys[0] == "fast" and "openai/*" in keys and "anthropic/*" not in keys


def test_count_tokens_of_a_group_uses_its_first_deployment_tokenizer(stub: pb_grpc.CompletionServiceStub) -> None:
    counted = stub.CountTokens(pb.CountTokensRequest(model="gpt", text="hello world"), timeout=10)
    assert counted.tokenizer == "o200k_base"  # gpt-4o's encoding, not the cl100k estimate of an unknown name
