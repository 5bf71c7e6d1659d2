"""Throwaway PKI for TLS tests (trustme): a server CA, a client CA, and a client CA nobody trusts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["Pki", "make_pki", "secure_health"]


@dataclass(frozen=True)
class Pki:
    """PEM files: the server's chain and key (signed by ``ca``), a client chain and key signed by
    ``client_ca`` (what ``--tls-client-ca`` trusts) and a rogue one signed by an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path
    other_ca: Path


def _write(path: Path, blob: trustme.Blob) -> Path:
    blob.write_to_path(str(path))
    return path


def make_pki(directory: Path, *server_names: str) -> Pki:
    """Certificates for ``localhost``, ``127.0.0.1``, ``::1`` and ``server_names`` under ``directory``."""
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("localhost", "127.0.0.1", "::1", *server_names)
    client = client_ca.issue_cert("client.example")
    rogue = other_ca.issue_cert("client.example")
    d = directory
    return Pki(
        ca=_write(d / "ca.pem", server_ca.cert_pem),
        server_cert=_write(d / "server.pem", server.cert_chain_pems[0]),
        server_key=_write(d / "server.key", server.private_key_pem),
        client_ca=_write(d / "client-ca.pem", client_ca.cert_pem),
        client_cert=_write(d / "client.pem", client.cert_chain_pems[0]),
        client_key=_write(d / "client.key", client.private_key_pem),
        rogue_cert=_write(d / "rogue.pem", rogue.cert_chain_pems[0]),
        rogue_key=_write(d / "rogue.key", rogue.private_key_pem),
        other_ca=_write(d / "other-ca.pem", other_ca.cert_pem),
    )


def secure_health(address: str, credentials: grpc.ChannelCredentials, timeout: float = 30.0) -> int:
    """Poll the health service over TLS until it answers; returns its status (1 = SERVING)."""
    deadline = time.monotonic() + timeout
    with grpc.secure_channel(address, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status)
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
