"""TLS and mTLS on the listener (--tls-cert, --tls-key, --tls-client-ca) and in the thin client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import llmrpc
import pytest
from cryptography.hazmat.primitives import serialization
from llmrpc_server.config import Settings
from llmrpc_server.tls import load_listener_tls

from tests.process_support import ServerProcess
from tests.support import GatewayThread, free_port, gateway_settings
from tests.test_grpcurl import GRPCURL
from tests.tls_support import Pki, make_pki, secure_health

MESSAGES = [{"role": "user", "content": "hi"}]
ECHO = "You said: hi"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_gateway(pki: Pki) -> Iterator[GatewayThread]:
    """TLS without client certificates."""
    with GatewayThread(gateway_settings(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))) as gw:
        yield gw


@pytest.fixture(scope="module")
def mtls_gateway(pki: Pki) -> Iterator[GatewayThread]:
    """TLS that requires a client certificate signed by the client CA."""
    settings = gateway_settings(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                                tls_client_ca=str(pki.client_ca))
    with GatewayThread(settings) as gw:
        yield gw


def _answer(client: llmrpc.Client) -> str:
    return str(client.completion(model="mock/echo", messages=MESSAGES).choices[0].message.content)


# --- the thin client against a TLS listener -------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
def test_client_with_the_ca_gets_answers_unary_and_streamed(tls_gateway: GatewayThread, pki: Pki,
                                                            as_bytes: bool) -> None:
    root: Any = pki.ca.read_bytes() if as_bytes else str(pki.ca)
    with llmrpc.Client(tls_gateway.address, root_certificates=root) as client:
        assert _answer(client).endswith(ECHO)
        chunks = list(client.completion(model="mock/echo", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).endswith(ECHO)


def test_async_client_over_tls(tls_gateway: GatewayThread, pki: Pki) -> None:
    async def run() -> str:
        async with llmrpc.Client(tls_gateway.address, root_certificates=pki.ca) as client:
            resp = await client.acompletion(model="mock/echo", messages=MESSAGES)
            stream = await client.acompletion(model="mock/echo", messages=MESSAGES, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text.endswith(ECHO)
            return str(resp.choices[0].message.content)

    assert asyncio.run(run()).endswith(ECHO)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"tls": True}, {"root_certificates": "other"}],
    ids=["plaintext", "default-roots", "wrong-ca"],
)
def test_client_without_the_right_ca_fails_cleanly(tls_gateway: GatewayThread, pki: Pki,
                                                   kwargs: dict[str, Any]) -> None:
    if kwargs.get("root_certificates") == "other":
        kwargs = {"root_certificates": pki.other_ca}
    with llmrpc.Client(tls_gateway.address, **kwargs) as client, pytest.raises(llmrpc.APIConnectionError) as info:
        client.completion(model="mock/echo", messages=MESSAGES, timeout=20)
    assert info.value.grpc_code == grpc.StatusCode.UNAVAILABLE


def test_health_over_tls(tls_gateway: GatewayThread, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    assert secure_health(tls_gateway.address, creds) == 1


# --- mTLS ----------------------------------------------------------------------------------------------


def test_mtls_serves_a_client_certificate_from_the_trusted_ca(mtls_gateway: GatewayThread, pki: Pki) -> None:
    with llmrpc.Client(mtls_gateway.address, root_certificates=pki.ca, client_cert=pki.client_cert,
                       client_key=pki.client_key) as client:
        assert _answer(client).endswith(ECHO)


@pytest.mark.parametrize("cert", ["none", "rogue"])
def test_mtls_refuses_a_missing_or_foreign_client_certificate(mtls_gateway: GatewayThread, pki: Pki,
                                                               cert: str) -> None:
    extra: dict[str, Any] = {}
    if cert == "rogue":
        extra = {"client_cert": pki.rogue_cert, "client_key": pki.rogue_key}
    with llmrpc.Client(mtls_gateway.address, root_certificates=pki.ca, **extra) as client, \
            pytest.raises(llmrpc.APIConnectionError) as info:
        client.completion(model="mock/echo", messages=MESSAGES, timeout=20)
    assert info.value.grpc_code == grpc.StatusCode.UNAVAILABLE


def test_health_over_mtls_needs_the_client_certificate_too(mtls_gateway: GatewayThread, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.client_key.read_bytes(),
                                         pki.client_cert.read_bytes())
    assert secure_health(mtls_gateway.address, creds) == 1


# --- module-level functions configured by the environment ----------------------------------------------


@pytest.fixture
def tls_env(monkeypatch: pytest.MonkeyPatch, mtls_gateway: GatewayThread, pki: Pki) -> None:
    for name in ("LLMRPC_TLS", "LLMRPC_TLS_CA", "LLMRPC_TLS_CERT", "LLMRPC_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLMRPC_SERVER", mtls_gateway.address)


@pytest.mark.usefixtures("tls_env")
def test_module_level_completion_uses_the_tls_env_vars(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    monkeypatch.setenv("LLMRPC_TLS", "1")
    monkeypatch.setenv("LLMRPC_TLS_CA", str(pki.ca))
    monkeypatch.setenv("LLMRPC_TLS_CERT", str(pki.client_cert))
    monkeypatch.setenv("LLMRPC_TLS_KEY", str(pki.client_key))
    resp = llmrpc.completion(model="mock/echo", messages=MESSAGES)
    assert resp.choices[0].message.content.endswith(ECHO)
    aresp = asyncio.run(llmrpc.acompletion(model="mock/echo", messages=MESSAGES))
    assert aresp.choices[0].message.content.endswith(ECHO)


@pytest.mark.usefixtures("tls_env")
def test_module_level_client_follows_env_changes(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    """The shared client is per address *and* TLS environment: plaintext first, then mTLS, on one address."""
    with pytest.raises(llmrpc.APIConnectionError):
        llmrpc.completion(model="mock/echo", messages=MESSAGES, timeout=20)
    monkeypatch.setenv("LLMRPC_TLS_CA", str(pki.ca))  # a CA alone turns TLS on; still no client certificate
    with pytest.raises(llmrpc.APIConnectionError):
        llmrpc.completion(model="mock/echo", messages=MESSAGES, timeout=20)
    monkeypatch.setenv("LLMRPC_TLS_CERT", str(pki.client_cert))
    monkeypatch.setenv("LLMRPC_TLS_KEY", str(pki.client_key))
    assert llmrpc.completion(model="mock/echo", messages=MESSAGES).choices[0].message.content.endswith(ECHO)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LLMRPC_TLS": "maybe"}, "LLMRPC_TLS must be"),
        ({"LLMRPC_TLS": "0", "LLMRPC_TLS_CA": "ca.pem"}, "LLMRPC_TLS is off but LLMRPC_TLS_CA"),
        ({"LLMRPC_TLS_CERT": "client.pem"}, "LLMRPC_TLS_CERT and LLMRPC_TLS_KEY go together"),
        ({"LLMRPC_TLS_CA": "/nonexistent/ca.pem"}, "LLMRPC_TLS_CA: cannot read '/nonexistent/ca.pem'"),
    ],
)
def test_bad_tls_env_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str) -> None:
    for name in ("LLMRPC_TLS", "LLMRPC_TLS_CA", "LLMRPC_TLS_CERT", "LLMRPC_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        llmrpc.Client("127.0.0.1:1")


def test_explicit_arguments_win_over_the_env(monkeypatch: pytest.MonkeyPatch, tls_gateway: GatewayThread,
                                             pki: Pki) -> None:
    monkeypatch.setenv("LLMRPC_TLS_CA", "/nonexistent/ca.pem")  # would fail if read
    with llmrpc.Client(tls_gateway.address, root_certificates=pki.ca.read_text()) as client:  # PEM as str
        assert _answer(client).endswith(ECHO)


def test_tls_true_takes_pem_files_from_the_env(monkeypatch: pytest.MonkeyPatch, mtls_gateway: GatewayThread,
                                               pki: Pki) -> None:
    monkeypatch.delenv("LLMRPC_TLS", raising=False)
    monkeypatch.setenv("LLMRPC_TLS_CA", str(pki.ca))
    monkeypatch.setenv("LLMRPC_TLS_CERT", str(pki.client_cert))
    monkeypatch.setenv("LLMRPC_TLS_KEY", str(pki.client_key))
    with llmrpc.Client(mtls_gateway.address, tls=True) as client:
        assert _answer(client).endswith(ECHO)
    with llmrpc.Client(mtls_gateway.address, tls=False) as client, pytest.raises(llmrpc.APIConnectionError):
        client.completion(model="mock/echo", messages=MESSAGES, timeout=20)  # plaintext, env ignored


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"client_cert": b"-----BEGIN CERTIFICATE-----"}, "client_cert and client_key go together"),
        ({"tls": False, "root_certificates": b"-----BEGIN CERTIFICATE-----"}, "tls is off but root_certificates"),
        ({"root_certificates": Path("/nonexistent/ca.pem")}, "root_certificates: cannot read"),
        ({"root_certificates": b"not a certificate"}, "root_certificates: not PEM"),
        ({"credentials": grpc.ssl_channel_credentials(), "tls": True}, "either credentials or tls"),
    ],
)
def test_bad_client_tls_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        llmrpc.Client("127.0.0.1:1", **kwargs)


# --- startup errors name the flag ---------------------------------------------------------------------


def _settings(**kwargs: Any) -> Settings:
    return Settings(host="127.0.0.1", port=0, **kwargs)


def test_bad_tls_files_are_startup_errors_naming_the_flag(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pw")))
    cases = [
        ({"tls_cert": str(pki.server_cert)}, "--tls-key is required with --tls-cert"),
        ({"tls_key": str(pki.server_key)}, "--tls-cert is required with --tls-key"),
        ({"tls_client_ca": str(pki.client_ca)}, "--tls-client-ca needs --tls-cert and --tls-key"),
        ({"tls_cert": str(tmp_path / "missing.pem"), "tls_key": str(pki.server_key)}, "--tls-cert .*cannot read"),
        ({"tls_cert": str(pki.server_cert), "tls_key": str(tmp_path / "missing.key")}, "--tls-key .*cannot read"),
        ({"tls_cert": str(garbage), "tls_key": str(pki.server_key)}, "--tls-cert: no usable PEM certificate"),
        ({"tls_cert": str(pki.server_cert), "tls_key": str(garbage)}, "--tls-key .*not a usable PEM private key"),
        ({"tls_cert": str(pki.server_cert), "tls_key": str(pki.client_key)}, "--tls-key .*is not the private key"),
        ({"tls_cert": str(pki.server_cert), "tls_key": str(encrypted)}, "--tls-key .*encrypted"),
        ({"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key), "tls_client_ca": str(garbage)},
         "--tls-client-ca: no usable PEM certificate"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            load_listener_tls(_settings(**kwargs))
    assert load_listener_tls(_settings()) is None


def test_cli_refuses_to_start_with_a_mismatched_key(pki: Pki, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmrpc_server", "--host", "127.0.0.1", "--port", str(free_port()),
         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key)],
        env={k: v for k, v in os.environ.items() if not k.startswith("LLMRPC_")}, capture_output=True, text=True,
        timeout=60, check=False)
    assert out.returncode != 0
    assert "bad setting: --tls-key" in out.stderr and "is not the private key of --tls-cert" in out.stderr


def test_workers_share_a_tls_port(pki: Pki, tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(tmp_path, "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
                           "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                           "--tls-client-ca", str(pki.client_ca))
    address = f"127.0.0.1:{port}"
    try:
        server.wait_for(f"listening on 127.0.0.1:{port} with mTLS", count=2)  # both workers are up, with mTLS
        creds = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.client_key.read_bytes(),
                                             pki.client_cert.read_bytes())
        assert secure_health(address, creds) == 1
        for _ in range(4):  # fresh connections, spread over the workers by the kernel
            with llmrpc.Client(address, root_certificates=pki.ca, client_cert=pki.client_cert,
                               client_key=pki.client_key) as client:
                assert _answer(client).endswith(ECHO)
            with llmrpc.Client(address, root_certificates=pki.ca) as client, \
                    pytest.raises(llmrpc.APIConnectionError):
                _answer(client)
    finally:
        server.stop()


# --- grpcurl --------------------------------------------------------------------------------------------

needs_grpcurl = pytest.mark.skipif(not Path(GRPCURL).exists(), reason="grpcurl not installed")


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_grpcurl
def test_grpcurl_with_cacert(tls_gateway: GatewayThread, pki: Pki) -> None:
    listed = _grpcurl("-cacert", str(pki.ca), tls_gateway.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert "llmrpc.v1.CompletionService" in listed.stdout.split()
    body = json.dumps({"model": "mock/echo", "messages": MESSAGES})
    out = _grpcurl("-cacert", str(pki.ca), "-d", body, tls_gateway.address, "llmrpc.v1.CompletionService/Complete")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["choices"][0]["message"]["content"].endswith(ECHO)
    plain = _grpcurl("-plaintext", tls_gateway.address, "list")
    assert plain.returncode != 0


@needs_grpcurl
def test_grpcurl_mtls_with_cert_and_key(mtls_gateway: GatewayThread, pki: Pki) -> None:
    body = json.dumps({"model": "mock/echo", "messages": MESSAGES})
    call = ("-d", body, mtls_gateway.address, "llmrpc.v1.CompletionService/Complete")
    out = _grpcurl("-cacert", str(pki.ca), "-cert", str(pki.client_cert), "-key", str(pki.client_key), *call)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["choices"][0]["message"]["content"].endswith(ECHO)
    refused = _grpcurl("-cacert", str(pki.ca), *call)
    assert refused.returncode != 0
    health = _grpcurl("-cacert", str(pki.ca), "-cert", str(pki.client_cert), "-key", str(pki.client_key),
                      "-d", "{}", mtls_gateway.address, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout)["status"] == "SERVING"
