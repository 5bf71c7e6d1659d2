"""Protected mode (Redis's model): with no caller authentication, answer only callers on this machine.

A gateway holds provider keys, so one listening beyond loopback with neither ``--auth-tokens`` nor
``--tls-client-ca`` would spend them for anyone who reaches the port. Unless
``--allow-unauthenticated`` says that is intended, such a gateway serves only loopback (and
unix-socket) callers. This module is the pure decision; ``interceptors.ProtectedModeInterceptor``
applies it to every RPC but health and reflection.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import unquote

from .config import Settings

__all__ = [
    "REFUSAL",
    "Peer",
    "bearer_tokens",
    "binds_loopback_only",
    "caller_auth_configured",
    "is_local_peer",
    "needs_peer_check",
    "parse_peer",
    "startup_warnings",
    "virtual_keys_configured",
]

REFUSAL = (
    "this llmrpc gateway is in protected mode: no caller authentication is configured, so it answers only "
    "callers on its own machine (loopback). To serve this caller, start the server with --auth-tokens (callers "
    "send 'authorization: Bearer <token>') and/or --tls-client-ca (callers present a client certificate), or "
    "with --allow-unauthenticated to serve anyone who can reach it"
)
_LOCAL_SCHEMES = ("unix", "unix-abstract")


@dataclass(frozen=True)
class Peer:
    """A caller's transport address, from gRPC's ``context.peer()``; ``kind`` is "" when unparseable."""

    kind: str
    ip: IPv4Address | IPv6Address | None = None

    @property
    def is_local(self) -> bool:
        """Loopback (127.0.0.0/8, ::1, ::ffff:127.x) or a unix socket; anything unknown is not."""
        if self.kind in _LOCAL_SCHEMES:
            return True
        if isinstance(self.ip, IPv6Address) and self.ip.ipv4_mapped is not None:
            return self.ip.ipv4_mapped.is_loopback
        return self.ip is not None and self.ip.is_loopback


def parse_peer(peer: str) -> Peer:
    """Parse gRPC's URI-style peer: ``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5`` (brackets often
    percent-encoded, ``%5B::1%5D``, zone ids as ``%25eth0``), ``unix:/path``, ``unix-abstract:name``."""
    scheme, sep, rest = peer.partition(":")
    if not sep:
        return Peer("")
    if scheme in _LOCAL_SCHEMES:
        return Peer(scheme)
    rest = unquote(rest)
    if scheme == "ipv4":
        host = rest.rpartition(":")[0] if rest.count(":") == 1 else rest
    elif scheme == "ipv6" and rest.startswith("[") and "]" in rest:
        host = rest[1:rest.index("]")]
    else:
        return Peer("")
    try:
        ip = ip_address(host)
    except ValueError:
        return Peer("")
    return Peer(scheme, ip)


@functools.lru_cache(maxsize=4096)  # one entry per connection: peers carry the client's port
def is_local_peer(peer: str) -> bool:
    """Whether ``context.peer()`` names a caller on this machine's loopback or a unix socket."""
    return parse_peer(peer).is_local


def bearer_tokens(settings: Settings) -> tuple[str, ...]:
    """The usable ``--auth-tokens``: an empty entry (``LLMRPC_AUTH_TOKENS=`` or a trailing comma)
    would let an empty ``authorization: Bearer`` in, so it counts as no token at all."""
    return tuple(token.strip() for token in settings.auth_tokens if token.strip())


def caller_auth_configured(settings: Settings) -> bool:
    """Callers must prove who they are: bearer tokens, virtual keys, or client certificates (mTLS)."""
    return bool(bearer_tokens(settings)) or bool(settings.tls_client_ca) or virtual_keys_configured(settings)


def virtual_keys_configured(settings: Settings) -> bool:
    """The proxy config has a ``keys:`` section: every caller needs a key (or an admin token)."""
    return settings.proxy is not None and bool(settings.proxy.keys)


def binds_loopback_only(host: str) -> bool:
    """Whether ``--host`` admits only loopback connections (then every peer is local by construction)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def needs_peer_check(settings: Settings) -> bool:
    """Protected mode is on and a non-local caller could connect, so each call's peer is checked.
    On a loopback-only listener (tests, the benchmark) the check could never refuse, so it is skipped."""
    return (not caller_auth_configured(settings) and not settings.allow_unauthenticated
            and not binds_loopback_only(settings.host))


def startup_warnings(settings: Settings) -> list[str]:
    """What the operator should hear once at startup about who can call this listener."""
    out: list[str] = []
    where = f"{settings.host}:{settings.port}"
    if needs_peer_check(settings):
        out.append(f"protected mode: listening on {where} with no caller authentication, so only loopback callers "
                   "are served and others get UNAUTHENTICATED; configure --auth-tokens and/or --tls-client-ca, or "
                   "pass --allow-unauthenticated")
    if settings.allow_unauthenticated and not caller_auth_configured(settings):
        out.append(f"--allow-unauthenticated: anyone who can reach {where} can call this gateway and spend its "
                   "provider keys")
    if bearer_tokens(settings) and not settings.tls_cert and not binds_loopback_only(settings.host):
        out.append(f"--auth-tokens without --tls-cert: bearer tokens cross the network to {where} in cleartext")
    elif virtual_keys_configured(settings) and not settings.tls_cert and not binds_loopback_only(settings.host):
        out.append(f"virtual keys without --tls-cert: callers' keys cross the network to {where} in cleartext")
    return out
