"""Which addresses the gateway may connect to for a URL a caller chose (pure policy, no I/O).

A gateway that sends requests to URLs its callers name (``api_base``, image URLs) is a server-side
request forgery vector: cloud metadata at ``169.254.169.254``, admin ports on localhost, the
private network. The executor enforces an :class:`AddressCheck` at connect time: it resolves the
host, asks :meth:`AddressCheck.refusal` about every address, and pins the connection to the
addresses it checked, so a DNS answer that changes in between (rebinding) cannot bypass it.

``client_api_base`` modes for a caller-named ``api_base``:

- ``any``: any host, except link-local and cloud metadata addresses;
- ``public``: only hosts whose every address is public (``is_global``);
- ``off``: refused before anything is sent.

A URL starting with one of the ``client_api_base_allow`` prefixes is always allowed, unchecked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

__all__ = [
    "API_BASE_MODES",
    "FETCH_MODES",
    "AddressCheck",
    "EgressPolicy",
    "EgressRefused",
    "InvalidProxy",
    "is_link_local_or_metadata",
    "matches_prefix",
    "proxies_from_env",
]

API_BASE_MODES = ("any", "public", "off")
# ``fetch_media`` modes for image URLs the gateway downloads itself (``media.MediaInliner``): public hosts
# only, any host, or none.
FETCH_MODES = ("public", "all", "off")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Link-local (where clouds serve instance metadata and credentials) and the metadata addresses that
# are not link-local: AWS's IPv6 endpoint in its unique-local range.
_LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
_METADATA = (ipaddress.ip_address("fd00:ec2::254"),)


def is_link_local_or_metadata(address: IPAddress) -> bool:
    """Link-local (169.254.0.0/16, fe80::/10, also as IPv4-mapped IPv6) or a cloud metadata address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address in _METADATA or any(address in net for net in _LINK_LOCAL if address.version == net.version)


@dataclass(frozen=True, slots=True)
class AddressCheck:
    """What a connection for one caller-chosen URL may reach; ``field`` is the request field a refusal
    names (``api_base``, ``messages[0].content_parts[1].image_url.url``)."""

    field: str
    public_only: bool
    lift_hint: str = ""  # how an operator lifts the refusal, appended to its message

    def refusal(self, host: str, address: IPAddress) -> EgressRefused | None:
        """Why ``host`` may not be reached at ``address``, or None."""
        if self.public_only and not _is_public(address):
            kind = "non-public address"
        elif is_link_local_or_metadata(address):
            kind = "link-local or cloud metadata address"
        else:
            return None
        literal = host.strip("[]") == str(address)
        why = f"{address} is a {kind}" if literal else f"{host} resolves to the {kind} {address}"
        hint = f" ({self.lift_hint})" if self.lift_hint else ""
        return EgressRefused(self.field, f"{why}; this gateway does not connect there{hint}")


class EgressRefused(Exception):
    """A caller-chosen URL the egress policy refuses; nothing was sent. ``field`` names the request
    field that chose it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """The server's ``client_api_base`` settings."""

    mode: str = "any"
    allow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in API_BASE_MODES:
            raise ValueError(f"client_api_base must be one of {', '.join(API_BASE_MODES)}, not {self.mode!r}")
        for prefix in self.allow:
            parts = urlsplit(prefix)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"client_api_base_allow: {prefix!r} is not an http(s)://host[:port][/path] prefix")

    def refused(self, url: str) -> bool:
        """Whether a caller-named ``url`` is refused outright (mode ``off``, no allow prefix)."""
        return self.mode == "off" and not matches_prefix(url, self.allow)

    def check(self, url: str) -> AddressCheck | None:
        """The connect-time check for a caller-named ``url``; None when an allow prefix lifts it."""
        if matches_prefix(url, self.allow):
            return None
        return AddressCheck("api_base", public_only=self.mode != "any",
                            lift_hint="a server's client_api_base_allow prefix lifts that")


def matches_prefix(url: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``url`` starts with one of ``prefixes``: the same scheme, host (case-insensitive) and port
    (a prefix without one means the scheme's default), then a path prefix ending at a segment
    boundary. ``http://h/v1`` allows ``http://h:80/v1/chat`` but not ``http://h/v10``,
    ``http://h:8000/v1`` nor ``http://h.evil/v1``."""
    if not prefixes:
        return False
    try:
        parts = urlsplit(url)
        origin = _origin(parts)
    except ValueError:
        return False
    if parts.username is not None or parts.password is not None:
        return False  # "http://allowed@evil/" must not pass as the allowed host
    for prefix in prefixes:
        allowed = urlsplit(prefix)
        if _origin(allowed) != origin:
            continue
        base = allowed.path.rstrip("/")
        if not base or parts.path == base or parts.path.startswith(base + "/"):
            return True
    return False


def _origin(parts: SplitResult) -> tuple[str, str, int | None]:
    """Scheme, host and port, the port defaulted by the scheme (``http://h`` is ``http://h:80``)."""
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def _is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global


class InvalidProxy(ValueError):
    """A proxy URL that is not ``http(s)://[user:password@]host[:port]``."""


def proxies_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """``{"http": url, "https": url, "no": hosts}`` from ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``
    and ``NO_PROXY`` (either case; lower case wins, as in curl and httpx). Raises
    :class:`InvalidProxy` naming the variable when a proxy URL is unusable, so a server fails at
    startup rather than on its first call (reqwest would silently skip, e.g., a ``socks5://`` one)."""
    found: dict[str, str] = {}
    for name in ("http", "https", "all", "no"):
        variable = f"{name}_proxy" if env.get(f"{name}_proxy") else f"{name.upper()}_PROXY"
        value = env.get(variable, "").strip()
        if not value:
            continue
        if name != "no":
            try:
                _check_proxy(value)
            except InvalidProxy as exc:
                raise InvalidProxy(f"{variable}: {exc}") from None
        found[name] = value if "://" in value or name == "no" else f"http://{value}"
    for scheme in ("http", "https"):
        if scheme not in found and "all" in found:
            found[scheme] = found["all"]
    found.pop("all", None)
    return found


def _check_proxy(url: str) -> None:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise InvalidProxy(f"{url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidProxy(f"{url!r} is not an http(s)://host[:port] proxy URL")
