"""Egress proxies for :mod:`._http`, configured like httpx and curl.

``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` name an ``http://[user:password@]host:port`` proxy;
``NO_PROXY`` lists the hosts reached directly. Pure functions: the client does the connecting.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

__all__ = ["InvalidProxy", "Proxy", "bypasses_proxy", "parse_proxy", "proxies_from_env"]


class InvalidProxy(ValueError):
    """A proxy URL that is not ``http://host[:port]``."""


def proxies_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """``{"http": url, "https": url, "no": hosts}`` from ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``
    and ``NO_PROXY`` (either case; lower case wins, as in curl and httpx). Raises
    :class:`InvalidProxy` naming the variable when a proxy URL is unusable, so a server fails at
    startup rather than on its first call."""
    found: dict[str, str] = {}
    for name in ("http", "https", "all", "no"):
        variable = f"{name}_proxy" if env.get(f"{name}_proxy") else f"{name.upper()}_PROXY"
        value = env.get(variable, "").strip()
        if not value:
            continue
        if name != "no":
            try:
                parse_proxy(value)
            except InvalidProxy as exc:
                raise InvalidProxy(f"{variable}: {exc}") from None
        found[name] = value
    for scheme in ("http", "https"):
        if scheme not in found and "all" in found:
            found[scheme] = found["all"]
    found.pop("all", None)
    return found


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` names the host: ``*``, a domain and its subdomains (``example.com``,
    ``.example.com``), an IP address or CIDR range, any of them optionally with ``:port``."""
    host = host.lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        name, sep, entry_port = entry.rpartition(":")
        if sep and entry_port.isdigit() and entry.count(":") == 1:  # host:port, not an IPv6 address
            if int(entry_port) != port:
                continue
            entry = name
        if entry == "*":
            return True
        if not entry:
            continue
        try:
            network = ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            domain = entry.lstrip("*").lstrip(".")
            if host == domain or host.endswith(f".{domain}"):
                return True
        else:
            if address is not None and address in network:
                return True
    return False


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    authorization: str | None  # a Proxy-Authorization value from the URL's user:password


@lru_cache(maxsize=32)
def parse_proxy(url: str) -> Proxy:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidProxy(f"{url!r}: {exc}") from None
    if parts.scheme != "http" or not parts.hostname:
        raise InvalidProxy(f"{url!r} is not an http://host[:port] proxy URL")
    auth = None
    if parts.username is not None:
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(user_pass).decode()
    return Proxy(parts.hostname, port or 80, auth)
