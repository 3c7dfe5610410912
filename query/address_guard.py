"""Refuse URLs that lead to this machine or its private network, so a URL input cannot probe internal hosts.

Checked on the resolved addresses, whatever the spelling (`localhost`, `127.1`, `2130706433`, `0x7f000001`,
`0177.0.0.1`, `[::ffff:127.0.0.1]` all resolve to loopback), and again at every redirect. `GuardedAdapter`
then connects to the very address that was checked (the Host header and the TLS name stay the URL's), so a
name that resolves to a public address for the check and to 127.0.0.1 for the connection (DNS rebinding)
gets nowhere. Connections are direct: an HTTP(S)_PROXY would resolve names itself, out of our sight.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from requests.adapters import HTTPAdapter

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


class GuardedAdapter(HTTPAdapter):
    """A requests transport adapter that checks each request's host with `check_url` and connects to the
    checked address. Mount it for http:// and https:// on a session used for one URL input at a time."""

    def __init__(self, *, allow_private: bool = False, resolver: Resolver = system_resolver) -> None:
        super().__init__(max_retries=0)
        self.allow_private = allow_private
        self.resolver = resolver
        self._address: str | None = None

    def send(self, request: Any, **kwargs: Any) -> Any:
        addresses = check_url(request.url, allow_private=self.allow_private, resolver=self.resolver)
        return self.send_to(request, addresses[0], **kwargs)

    def send_to(self, request: Any, address: str, **kwargs: Any) -> Any:
        """Send `request` to `address`, already checked (the connection layer; tests replace it)."""
        parts = urlsplit(request.url)
        request.headers["Host"] = parts.netloc.rsplit("@", 1)[-1]
        self._address = address
        try:
            return super().send(request, **kwargs)
        finally:
            self._address = None

    def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Any = None,
                                        cert: Any = None) -> Any:
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        if self._address is None:
            raise RuntimeError("GuardedAdapter connects only through send()")
        hostname = host_params["host"]
        host_params["host"] = self._address
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = hostname
            pool_kwargs["assert_hostname"] = hostname
        return self.poolmanager.connection_from_host(**host_params, pool_kwargs=pool_kwargs)
