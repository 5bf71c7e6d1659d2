"""TLS and mTLS on the listener: read and check the ``--tls-*`` PEM files, build server credentials.

Files are checked with the standard library's OpenSSL binding before gRPC sees them, because gRPC
accepts a wrong or mismatched key silently and only fails each handshake later; a bad file is a
startup error naming its flag instead.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from .config import Settings

__all__ = ["ListenerTLS", "load_listener_tls"]


@dataclass(frozen=True)
class ListenerTLS:
    """The PEM bytes a TLS listener serves; ``client_ca`` set means client certificates are required."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def load_listener_tls(settings: Settings) -> ListenerTLS | None:
    """The listener's TLS material, or None for plaintext. Raises ValueError naming the bad flag."""
    if not (settings.tls_cert or settings.tls_key or settings.tls_client_ca):
        return None
    if not settings.tls_cert and not settings.tls_key:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key: client certificates are checked over TLS")
    if not settings.tls_cert or not settings.tls_key:
        missing, given = ("--tls-cert", "--tls-key") if not settings.tls_cert else ("--tls-key", "--tls-cert")
        raise ValueError(f"{missing} is required with {given}: TLS needs both a certificate and its key")
    cert = _read("--tls-cert", settings.tls_cert)
    key = _read("--tls-key", settings.tls_key)
    _check_certificates("--tls-cert", cert)
    _check_pair(settings.tls_cert, settings.tls_key)
    client_ca = None
    if settings.tls_client_ca:
        client_ca = _read("--tls-client-ca", settings.tls_client_ca)
        _check_certificates("--tls-client-ca", client_ca)
    return ListenerTLS(cert, key, client_ca)


def _read(flag: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path!r}: cannot read it: {exc.strerror or exc}") from None
    if not data.strip():
        raise ValueError(f"{flag} {path!r} is empty")
    return data


def _check_certificates(flag: str, pem: bytes) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
        raise ValueError(f"{flag}: no usable PEM certificate in the file ({exc})") from None


def _no_passphrase() -> bytes:
    raise ValueError("the key is encrypted; gRPC needs an unencrypted PEM key")


def _check_pair(cert_path: str, key_path: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_path, key_path, password=_no_passphrase)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise ValueError(f"--tls-key {key_path!r} is not the private key of --tls-cert {cert_path!r}") from None
        raise ValueError(f"--tls-key {key_path!r}: not a usable PEM private key ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"--tls-key {key_path!r}: {exc}") from None
