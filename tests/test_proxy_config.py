"""The LiteLLM proxy config loader: sections, os.environ/ values, field-path errors, warnings,
and how it maps onto the flat settings (flags and LLMRPC_* still win)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llmrpc_server.config import Settings
from llmrpc_server.proxy_config import ConfigError, is_proxy_config, load_document, parse_proxy_config

CONFIGS = Path(__file__).parent / "configs"
ENV = {
    "AZURE_API_BASE_EU": "https://eu.example.azure.com", "AZURE_API_KEY_EU": "key-eu",
    "AZURE_API_BASE_US": "https://us.example.azure.com", "AZURE_API_KEY_US": "key-us",
    "OPENAI_API_KEY": "sk-openai", "ANTHROPIC_API_KEY": "sk-ant", "GROQ_API_KEY": "gsk",
}


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_litellm_docs_configs_load(name: str) -> None:
    settings = Settings.load(environ=ENV, config_file=str(CONFIGS / name))
    assert settings.proxy is not None
    assert settings.proxy.model_list


def test_azure_example_sections_and_mapping() -> None:
    settings = Settings.load(environ=ENV, config_file=str(CONFIGS / "litellm_azure_fallback.yaml"))
    proxy = settings.proxy
    assert proxy is not None
    eu = proxy.model_list[0]
    assert eu.model_name == "gpt-4o" and eu.deployment_id(0) == "azure-eu"
    assert eu.litellm_params.api_key == "key-eu" and eu.litellm_params.api_base == "https://eu.example.azure.com"
    assert eu.litellm_params.rpm == 600 and eu.litellm_params.api_version == "2024-06-01"
    assert proxy.model_list[3].litellm_params.extras == {"max_tokens": 1024}
    assert proxy.router_settings.routing_strategy == "usage-based-routing-v2"
    assert proxy.router_settings.model_group_alias == {"gpt-4": "gpt-4o"}
    assert settings.num_retries == 2  # router_settings wins over litellm_settings, as in LiteLLM's proxy
    assert settings.default_timeout == 30.0
    assert settings.drop_params is True
    assert settings.fallbacks == {"gpt-4o": ("gpt-4o-openai",), "gpt-4o-openai": ("claude-fallback",)}
    assert settings.context_window_fallbacks == {"gpt-4o": ("claude-fallback",)}
    assert settings.auth_tokens == ("sk-1234",)
    assert settings.success_callback == ("log",)
    assert "key-eu" not in repr(proxy) and "sk-1234" not in repr(proxy)


def test_cache_params_and_environment_variables() -> None:
    settings = Settings.load(environ=ENV, config_file=str(CONFIGS / "litellm_wildcards.yaml"))
    assert settings.cache_default is True and settings.cache_ttl == 600.0 and settings.cache_namespace == "team-a"
    settings = Settings.load(environ={}, config_file=str(CONFIGS / "litellm_shuffle_weights.yaml"))
    assert settings.env["OPENAI_API_KEY"] == "sk-from-config"
    assert settings.proxy is not None and settings.proxy.model_list[2].litellm_params.api_key == "sk-from-config"
    assert "unknown config key litellm_settings.json_logs is ignored" in settings.config_warnings
    # The real environment wins over environment_variables.
    settings = Settings.load(environ={"OPENAI_API_KEY": "sk-real"},
                             config_file=str(CONFIGS / "litellm_shuffle_weights.yaml"))
    assert settings.env["OPENAI_API_KEY"] == "sk-real"


def test_missing_environment_variable_names_it() -> None:
    env = {k: v for k, v in ENV.items() if k != "AZURE_API_KEY_US"}
    with pytest.raises(ConfigError, match=r"model_list\[1\]\.litellm_params\.api_key: environment variable "
                                          r"AZURE_API_KEY_US is not set"):
        Settings.load(environ=env, config_file=str(CONFIGS / "litellm_azure_fallback.yaml"))


@pytest.mark.parametrize(("doc", "message"), [
    ({"model_list": [{"model_name": "a", "litellm_params": {"model": "openai/x"}},
                     {"model_name": "a", "litellm_params": {"model": "openai/x"}},
                     {"model_name": "a", "litellm_params": {"model": "openai/x", "rpm": "many"}}]},
     "model_list[2].litellm_params.rpm: expected an integer"),
    ({"model_list": [{"model_name": "a"}]}, "model_list[0].litellm_params: required"),
    ({"model_list": {"model_name": "a"}}, "model_list: expected a list"),
    ({"router_settings": {"routing_strategy": "fastest"}}, "router_settings.routing_strategy: expected one of"),
    ({"router_settings": {"cooldown_time": "soon"}}, "router_settings.cooldown_time: expected a number"),
    ({"litellm_settings": {"drop_params": "perhaps"}}, "litellm_settings.drop_params: expected a boolean"),
    ({"router_settings": {"fallbacks": [{"a": ["b"], "c": ["d"]}]}}, "router_settings.fallbacks[0]: expected"),
    ({"model_list": [{"model_name": "a", "litellm_params": {"model": "openai/x"}, "model_info": {"id": "d"}},
                     {"model_name": "b", "litellm_params": {"model": "openai/y"}, "model_info": {"id": "d"}}]},
     "model_list[1].model_info.id: duplicate deployment id 'd'"),
])
def test_malformed_fields_are_named(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_proxy_config(doc, {})
    assert str(info.value).startswith(message)


def test_unknown_keys_warn_by_path() -> None:
    doc = {"model_list": [{"model_name": "a", "litellm_params": {"model": "openai/x", "seed": 7}, "extra": 1}],
           "router_settings": {"enable_pre_call_checks": True}, "guardrails": []}
    config = parse_proxy_config(doc, {})
    assert set(config.warnings) == {
        "unknown config key guardrails is ignored",
        "unknown config key router_settings.enable_pre_call_checks is ignored",
        "unknown config key model_list[0].extra is ignored",
    }
    assert config.model_list[0].litellm_params.extras == {"seed": 7}  # a provider extra, not unknown


def test_keys_section_is_kept_raw_for_the_virtual_keys_module() -> None:
    config = parse_proxy_config({"keys": [{"key": "os.environ/K", "models": ["a"]}]}, {"K": "sk-v"})
    assert config.keys == ({"key": "sk-v", "models": ["a"]},)


def test_flat_settings_files_still_load(tmp_path: Path) -> None:
    flat = tmp_path / "settings.json"
    flat.write_text(json.dumps({"num_retries": 5, "aliases": {"fast": "openai/gpt-4o-mini"}}))
    assert not is_proxy_config(load_document(str(flat)))
    settings = Settings.load(environ={}, config_file=str(flat))
    assert settings.num_retries == 5 and settings.proxy is None
    flat_yaml = tmp_path / "settings.yaml"
    flat_yaml.write_text("num_retries: 4\n")
    assert Settings.load(environ={}, config_file=str(flat_yaml)).num_retries == 4


def test_flags_and_env_override_the_proxy_config() -> None:
    path = str(CONFIGS / "litellm_azure_fallback.yaml")
    settings = Settings.load({"num_retries": "7"}, environ={**ENV, "LLMRPC_DROP_PARAMS": "false"}, config_file=path)
    assert settings.num_retries == 7 and settings.drop_params is False


def test_not_yaml_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_list: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        Settings.load(environ={}, config_file=str(bad))
