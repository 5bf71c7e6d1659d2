"""Virtual keys (LiteLLM's ``keys:``): parsing with field-path errors, who gets in (bearer or x-api-key,
unknown and expired keys, admin tokens), the ``models`` allowlist, protected mode, SIGHUP reloads, and the
key alias in callbacks and the access log - never the key."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import grpc
import llmrpc
import pytest
from google.rpc import error_details_pb2
from llmrpc_server.config import Settings
from llmrpc_server.keys import hash_key, parse_duration, parse_keys
from llmrpc_server.protected import caller_auth_configured, needs_peer_check
from llmrpc_server.proxy_config import ConfigError, parse_proxy_config

from tests.keys_support import MESSAGES, client_for, keyed_gateway

ALICE = "sk-alice-0123456789"
BOB = "sk-bob-0123456789"
RECORDS: list[dict[str, Any]] = []


def capture(kwargs: dict[str, Any], *_: Any) -> None:
    """A success/failure callback (``tests.test_virtual_keys:capture``) keeping LiteLLM's kwargs."""
    RECORDS.append(kwargs)


@pytest.fixture
def gateway(tmp_path: Path) -> Any:
    keys = [
        {"key": ALICE, "key_alias": "alice", "models": ["mock/echo", "openai/*"], "metadata": {"team": "a"}},
        {"key_hash": hash_key(BOB), "key_alias": "bob"},
        {"key": "sk-expired-0123456789", "key_alias": "old", "expires": "2020-01-01T00:00:00Z"},
    ]
    with keyed_gateway(keys, str(tmp_path / "state.sqlite"), auth_tokens=("admin-token",), access_log=True,
                       success_callback=("tests.test_virtual_keys:capture",),
                       failure_callback=("tests.test_virtual_keys:capture",)) as gw:
        yield gw


# ---- parsing ------------------------------------------------------------------------------------

def test_parse_every_field() -> None:
    ring = parse_keys([{"key": "sk-literal-key", "key_alias": "a", "models": ["m1", "openai/*"], "rpm_limit": 5,
                        "tpm_limit": 100, "max_budget": 1.5, "budget_duration": "30d",
                        "max_parallel_requests": 2, "metadata": {"team": "x"}, "expires": "2030-01-02"}])
    key = ring.keys[0]
    assert key.digest == hash_key("sk-literal-key") and "sk-literal-key" not in repr(key)
    assert (key.alias, key.models, key.rpm_limit, key.tpm_limit, key.max_budget) == ("a", ("m1", "openai/*"), 5,
                                                                                       100, 1.5)
    assert key.budget_duration == 30 * 86400 and key.max_parallel_requests == 2 and key.metadata == {"team": "x"}
    assert key.expires == pytest.approx(1893542400.0)  # 2030-01-02T00:00:00Z
    assert key.allows("m1") and key.allows("openai/gpt-4o") and not key.allows("anthropic/claude")
    assert ring.find("sk-literal-key") is key and ring.find("sk-literal-kez") is None


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400),
                                                ("30d", 2592000), ("2w", 1209600)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("entry", "message"), [
    ({"key": "sk-good-key-1", "rpm_limit": "many"}, "keys[1].rpm_limit: expected an integer >= 0"),
    ({"key": "sk-good-key-1", "tpm_limit": -1}, "keys[1].tpm_limit: expected an integer >= 0"),
    ({"key": "sk-good-key-1", "max_parallel_requests": 0}, "keys[1].max_parallel_requests: expected an integer >= 1"),
    ({"key": "sk-good-key-1", "max_budget": "lots"}, "keys[1].max_budget: expected a number of USD >= 0"),
    ({"key": "sk-good-key-1", "budget_duration": "1mo"}, "keys[1].budget_duration: expected a duration"),
    ({"key": "sk-good-key-1", "expires": "soon"}, "keys[1].expires: expected an ISO date"),
    ({"key": "sk-good-key-1", "models": "gpt-4o"}, "keys[1].models: expected a list of model names"),
    ({"key": "sk-good-key-1", "rpm": 5}, "keys[1].rpm: unknown key field"),
    ({"key_hash": "md5:abc"}, "keys[1].key_hash: expected sha256:<64 hex digits>"),
    ({"key": "sk-good-key-1", "key_hash": hash_key("x")}, "keys[1]: set exactly one of key or key_hash"),
    ({"key_alias": "nokey"}, "keys[1]: set exactly one of key or key_hash"),
    ({"key": "short"}, "keys[1].key: expected a string of at least 8 characters"),
    ({"key": ALICE}, "keys[1]: the same key as keys[0]"),
    ({"key": "sk-good-key-1", "key_alias": "alice"}, "keys[1].key_alias: duplicate key_alias 'alice'"),
])
def test_bad_entries_name_their_field(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_keys([{"key": ALICE, "key_alias": "alice"}, entry])
    assert str(info.value).startswith(message)


def test_key_from_the_environment_and_bad_config_fails_startup(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("keys:\n  - key: os.environ/TEAM_KEY\n    key_alias: team\n")
    settings = Settings.load(environ={"TEAM_KEY": "sk-from-env-123"}, config_file=str(path))
    assert settings.proxy is not None
    assert parse_keys(settings.proxy.keys).find("sk-from-env-123") is not None
    assert caller_auth_configured(settings)  # keys are caller authentication: protected mode is lifted
    assert not needs_peer_check(Settings(host="0.0.0.0", proxy=settings.proxy))
    assert needs_peer_check(Settings(host="0.0.0.0"))


# ---- who gets in --------------------------------------------------------------------------------

@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_a_key_is_served_by_bearer_or_x_api_key(gateway: Any, header: str) -> None:
    with client_for(gateway, ALICE, header) as client:
        resp = client.completion(model="mock/echo", messages=MESSAGES)
        chunks = list(client.completion(model="mock/echo", messages=MESSAGES, stream=True))
    assert resp.choices[0].message.content.endswith("You said: hi")
    assert chunks[-1].choices[0].finish_reason == "stop"
    with client_for(gateway, BOB, header) as client:  # configured by key_hash only
        assert client.completion(model="mock/echo", messages=MESSAGES).choices[0].message.content


@pytest.mark.parametrize("key", [None, "sk-unknown-0123456789", ""])
def test_unknown_or_missing_key_is_unauthenticated(gateway: Any, key: str | None) -> None:
    with client_for(gateway, key) as client, pytest.raises(llmrpc.AuthenticationError) as info:
        client.completion(model="mock/echo", messages=MESSAGES)
    assert info.value.grpc_code == grpc.StatusCode.UNAUTHENTICATED and info.value.reason == "API_KEY_INVALID"
    with client_for(gateway, key) as client, pytest.raises(llmrpc.AuthenticationError):
        list(client.completion(model="mock/echo", messages=MESSAGES, stream=True))


def test_expired_key_is_unauthenticated_naming_its_alias(gateway: Any) -> None:
    with client_for(gateway, "sk-expired-0123456789") as client, pytest.raises(llmrpc.AuthenticationError) as info:
        client.completion(model="mock/echo", messages=MESSAGES)
    assert "expired at 2020-01-01" in str(info.value) and info.value.metadata["keyAlias"] == "old"


def test_admin_token_is_served_without_key_rules(gateway: Any) -> None:
    with client_for(gateway, "admin-token") as client:  # not in alice's models, and no key at all
        assert client.completion(model="mock/other", messages=MESSAGES).choices[0].message.content


# ---- models allowlist ---------------------------------------------------------------------------

def test_model_outside_the_allowlist_is_permission_denied(gateway: Any) -> None:
    with client_for(gateway, ALICE) as client, pytest.raises(llmrpc.PermissionDeniedError) as info:
        client.completion(model="mock/other", messages=MESSAGES)
    err = info.value
    assert err.grpc_code == grpc.StatusCode.PERMISSION_DENIED and err.reason == "MODEL_NOT_ALLOWED"
    assert "mock/other" in str(err) and err.metadata == {"model": "mock/other", "field": "model",
                                                         "keyAlias": "alice"}
    with client_for(gateway, ALICE) as client, pytest.raises(llmrpc.PermissionDeniedError):
        list(client.completion(model="mock/other", messages=MESSAGES, stream=True))


def test_request_fallbacks_are_held_to_the_allowlist(gateway: Any) -> None:
    with client_for(gateway, ALICE) as client, pytest.raises(llmrpc.PermissionDeniedError) as info:
        client.completion(model="mock/echo", messages=MESSAGES, fallbacks=["anthropic/claude-3-5-haiku"])
    assert info.value.metadata["field"] == "fallbacks"


def test_permission_denied_carries_resource_info(gateway: Any) -> None:
    from grpc_status import rpc_status
    from llmrpc.v1 import completion_service_pb2 as pb
    from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Complete(pb.CompleteRequest(model="gemini/x", messages=[{"role": "user", "content": "hi"}]),
                          metadata=[("x-api-key", ALICE)], timeout=10)
    status = rpc_status.from_call(info.value)
    assert status is not None
    resources = [d for d in status.details if d.Is(error_details_pb2.ResourceInfo.DESCRIPTOR)]
    assert len(resources) == 1


# ---- the alias, never the key -------------------------------------------------------------------

def test_callbacks_and_access_log_carry_the_alias_not_the_key(gateway: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    RECORDS.clear()
    caplog.set_level(logging.INFO, logger="llmrpc_server.access")
    with client_for(gateway, ALICE) as client:
        client.completion(model="mock/echo", messages=MESSAGES,
                          metadata={"user_api_key_alias": "spoofed", "run": "1"})
        with pytest.raises(llmrpc.PermissionDeniedError):
            client.completion(model="mock/other", messages=MESSAGES)
    with client_for(gateway, "admin-token") as client:
        client.completion(model="mock/echo", messages=MESSAGES, metadata={"user_api_key_alias": "spoofed"})
    def access_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "llmrpc_server.access"]

    deadline = time.monotonic() + 10  # callbacks and access lines are written after the answer
    while (len(RECORDS) < 2 or len(access_lines()) < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    keyed = [r for r in RECORDS if r["metadata"].get("run") == "1"]
    assert keyed and keyed[0]["metadata"]["user_api_key_alias"] == "alice"
    assert keyed[0]["litellm_params"]["metadata"]["user_api_key_alias"] == "alice"
    admin = [r for r in RECORDS if r["metadata"].get("run") != "1"]
    assert admin and "user_api_key_alias" not in admin[0]["metadata"]  # a caller cannot name a key
    assert ALICE not in repr(RECORDS)
    lines = access_lines()
    assert any("key=alice status=OK" in line for line in lines)
    assert any("key=alice status=PERMISSION_DENIED" in line for line in lines)
    assert any("key=0 status=OK" in line for line in lines)
    assert not any(ALICE in line for line in lines)


# ---- reload -------------------------------------------------------------------------------------

def test_reconfigure_swaps_keys_and_keeps_them_on_a_bad_section() -> None:
    ring = parse_keys([{"key": ALICE, "key_alias": "alice"}])
    ring.reconfigure(Settings(proxy=parse_proxy_config({"keys": [{"key": BOB, "key_alias": "bob"}]}, {})))
    assert ring.find(ALICE) is None and ring.find(BOB) is not None
    ring.reconfigure(Settings(proxy=parse_proxy_config({"keys": [{"key": BOB, "rpm_limit": "x"}]}, {})))
    assert ring.find(BOB) is not None  # the bad section was not taken


def test_readme_keys_example_parses() -> None:
    import yaml

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### Virtual keys"):]
    block = section[section.index("```yaml") + len("```yaml"):section.index("```\n", section.index("```yaml"))]
    document = yaml.safe_load(block)
    proxy = parse_proxy_config(document, {"LLMRPC_MASTER_KEY": "sk-admin-123", "INTERN_KEY": "sk-intern-123"})
    ring = parse_keys(proxy.keys)
    bot, intern = ring.keys
    assert (bot.alias, bot.rpm_limit, bot.tpm_limit, bot.max_parallel_requests) == ("ci-bot", 60, 200000, 4)
    assert bot.budget_duration == 30 * 86400 and bot.allows("anthropic/claude-sonnet-4-5")
    assert ring.find("sk-intern-123") is intern and intern.expires is not None


def test_discovery_filter_follows_the_current_key() -> None:
    import contextvars

    from llmrpc_server.keys import CURRENT_KEY, current_model_filter

    ring = parse_keys([{"key": ALICE, "key_alias": "alice", "models": ["gpt-4o", "openai/*"]}])

    def under_key() -> Any:
        CURRENT_KEY.set(ring.keys[0])
        return current_model_filter()

    allowed = contextvars.copy_context().run(under_key)
    assert allowed is not None
    assert [m for m in ("gpt-4o", "openai/*", "anthropic/*", "claude") if allowed(m)] == ["gpt-4o", "openai/*"]
    assert current_model_filter() is None  # admin or no keys: everything is listed


def test_server_span_carries_the_alias_not_the_key(tmp_path: Path) -> None:
    from opentelemetry.trace import SpanKind

    from tests.otel_support import Otel, TelemetryGateway
    from tests.support import gateway_settings

    otel = Otel()
    proxy = parse_proxy_config({"keys": [{"key": ALICE, "key_alias": "alice"}]}, {})
    settings = gateway_settings(proxy=proxy, state_path=str(tmp_path / "state.sqlite"))
    gw = TelemetryGateway(settings, otel.telemetry()).start()
    try:
        with client_for(gw, ALICE) as client:
            client.completion(model="mock/echo", messages=MESSAGES)
        spans = otel.wait_spans()
    finally:
        gw.stop()
    server = [s for s in spans if s.kind is SpanKind.SERVER]
    assert server and (server[0].attributes or {}).get("metadata.user_api_key_alias") == "alice"
    assert not any(ALICE in repr(dict(s.attributes or {})) for s in spans)


def test_keys_without_tls_beyond_loopback_warn_at_startup() -> None:
    from llmrpc_server.protected import startup_warnings

    proxy = parse_proxy_config({"keys": [{"key": ALICE}]}, {})
    warnings = startup_warnings(Settings(host="0.0.0.0", proxy=proxy))
    assert any("virtual keys without --tls-cert" in w for w in warnings)
    assert not any("protected mode" in w for w in warnings)
    assert startup_warnings(Settings(host="127.0.0.1", proxy=proxy)) == []


def test_list_models_and_get_model_info_through_the_server_follow_the_key(tmp_path: Path) -> None:
    """A key sees only its ``models`` in ListModels, and GetModelInfo refuses the rest; admins see all."""
    from llmrpc.v1 import completion_service_pb2 as pb
    from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

    keys = [{"key": ALICE, "key_alias": "alice", "models": ["mock/echo", "openai/*"]}]
    aliases = {"fast": "mock/echo", "openai/house": "mock/echo"}
    with keyed_gateway(keys, str(tmp_path / "state.sqlite"), env={"OPENAI_API_KEY": "sk-server"},
                       auth_tokens=("admin-token",), aliases=aliases) as gw:
        with client_for(gw, ALICE) as client:
            alice_sees = {m["key"] for m in client.list_models()}
        with client_for(gw, "admin-token") as client:
            admin_sees = {m["key"] for m in client.list_models()}
        with grpc.insecure_channel(gw.address) as channel:
            stub = pb_grpc.CompletionServiceStub(channel)
            alice = [("authorization", f"Bearer {ALICE}")]
            assert stub.GetModelInfo(pb.GetModelInfoRequest(model="openai/gpt-4o"), metadata=alice).model_info
            with pytest.raises(grpc.RpcError) as info:
                stub.GetModelInfo(pb.GetModelInfoRequest(model="fast"), metadata=alice)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            admin = [("authorization", "Bearer admin-token")]
            assert stub.GetModelInfo(pb.GetModelInfoRequest(model="fast"), metadata=admin).model_info
    assert alice_sees == {"openai/house", "openai/*"}
    assert {"fast", "openai/house", "openai/*"} <= admin_sees
