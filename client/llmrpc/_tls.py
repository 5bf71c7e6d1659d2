"""TLS for the client's channels: ``Client(tls=..., root_certificates=..., client_cert=..., client_key=...)``
or, when none of those is passed, the ``LLMRPC_TLS*`` environment variables.

A PEM source is ``bytes`` (the PEM itself), a ``str`` starting with ``-----BEGIN`` (also the PEM
itself), or any other ``str`` / ``os.PathLike`` (a file to read). Files are read once, when the
``Client`` is made, so a missing file fails there, naming its parameter or variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import grpc

__all__ = ["TLS_ENV", "PemSource", "channel_credentials", "tls_env_key"]

PemSource = bytes | str | os.PathLike[str]

# parameter -> the environment variable that supplies it for module-level calls
_ENV_FOR = {"root_certificates": "LLMRPC_TLS_CA", "client_cert": "LLMRPC_TLS_CERT", "client_key": "LLMRPC_TLS_KEY"}
TLS_ENV = ("LLMRPC_TLS", *_ENV_FOR.values())
_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")


def tls_env_key(environ: Mapping[str, str]) -> tuple[str | None, ...]:
    """The TLS-relevant environment, so that shared clients are keyed by it as well as by address."""
    return tuple(environ.get(name) for name in TLS_ENV)


def channel_credentials(
    tls: bool | None, pems: Mapping[str, PemSource | None], environ: Mapping[str, str]
) -> grpc.ChannelCredentials | None:
    """Credentials for ``tls`` and the PEM sources (keys as in ``_ENV_FOR``), or None for plaintext.

    With no PEM source given, the environment supplies them, and ``LLMRPC_TLS`` stands in for
    ``tls=None``; ``tls=False`` ignores the environment. Any PEM source turns TLS on;
    ``root_certificates`` unset means gRPC's default roots (or ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``)."""
    names = {param: param for param in _ENV_FOR}
    tls_name = "tls"
    if tls is not False and all(value is None for value in pems.values()):
        names = dict(_ENV_FOR)
        pems = {param: environ.get(var) or None for param, var in _ENV_FOR.items()}
        if tls is None:
            tls, tls_name = _env_flag(environ), "LLMRPC_TLS"
    given = [names[param] for param, value in pems.items() if value is not None]
    if tls is False and given:
        raise ValueError(f"{tls_name} is off but {', '.join(given)} asks for TLS")
    if not tls and not given:
        return None
    if (pems.get("client_cert") is None) != (pems.get("client_key") is None):
        raise ValueError(f"{names['client_cert']} and {names['client_key']} go together (a client certificate and "
                         "its private key, for mTLS)")
    data = {param: _pem(names[param], value) for param, value in pems.items()}
    return grpc.ssl_channel_credentials(
        root_certificates=data.get("root_certificates"),
        private_key=data.get("client_key"),
        certificate_chain=data.get("client_cert"),
    )


def _env_flag(environ: Mapping[str, str]) -> bool | None:
    raw = environ.get("LLMRPC_TLS", "").strip().lower()
    if raw in _ON:
        return True
    if raw in _OFF:
        return False if raw else None
    raise ValueError(f"LLMRPC_TLS must be 1/true/yes/on or 0/false/no/off, not {raw!r}")


def _pem(name: str, source: PemSource | None) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        data = source.encode()
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ValueError(f"{name}: cannot read {os.fspath(source)!r}: {exc.strerror or exc}") from exc
    if b"-----BEGIN" not in data:
        raise ValueError(f"{name}: not PEM (no '-----BEGIN' line)")
    return data
