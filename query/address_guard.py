"""Refuse URLs that lead to this machine or its private network, so a URL input cannot probe internal hosts.

Checked on the resolved addresses (a public-looking name can point at 127.0.0.1) and again at every redirect.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]


class AddressRefused(Exception):
    """The URL's host is a loopback, private, link-local or otherwise internal address."""


def system_resolver(host: str, port: int) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def is_internal(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_unspecified
            or ip.is_reserved or not ip.is_global)


def check_url(url: str, *, allow_private: bool = False, resolver: Resolver = system_resolver) -> list[str]:
    """Return the URL's resolved addresses, or raise AddressRefused (or ValueError for a URL we cannot use)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = resolver(parts.hostname, port)
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"cannot resolve {parts.hostname}: {exc}") from exc
    if not addresses:
        raise ValueError(f"cannot resolve {parts.hostname}")
    if not allow_private:
        internal = [a for a in addresses if is_internal(a)]
        if internal:
            raise AddressRefused(f"refusing {parts.hostname}: it resolves to the internal address {internal[0]} "
                                 f"(use --allow-private to fetch from loopback or private networks)")
    return addresses
