"""Where webhook requests may go: a guard against server-side request forgery.

A receiver's URL is checked when it is registered, but a name can resolve elsewhere by the time we
send (DNS rebinding), so the sender checks again at connect time: the network backend below resolves
the host itself, refuses the connection unless every address is public (`ipaddress.is_global`), and
connects to the address it checked, not to a second resolution. TLS (SNI, certificate check) and the
Host header still use the URL's host name. Outside production, private and loopback addresses are
allowed (tests and development run receivers on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable

import httpcore
import httpx

from referloop.config import Environment, Settings

_IPV4_NUMBER = re.compile(r"^(?:[0-9]+|0[xX][0-9a-fA-F]*)$")


class AddressRefused(httpcore.ConnectError):
    """Raised before connecting; httpx passes it on as an `httpx.ConnectError`."""


def allows_private(settings: Settings) -> bool:
    return settings.env is not Environment.production


_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries to (IPv4-mapped, 6to4, Teredo, NAT64, IPv4-compatible):
    `64:ff9b::a00:1` reaches 10.0.0.1 through a NAT64 gateway, though it is "global" itself."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in net for net in (*_NAT64, _IPV4_COMPATIBLE)):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
        return ip.is_global and inner.is_global if ip.ipv4_mapped is None else inner.is_global
    return ip.is_global


def non_canonical_ip(host: str) -> bool:
    """A host that resolvers read as an IPv4 address but that is not written as one: `127.1`,
    `2130706433`, `0x7f000001`, `0177.0.0.1`, `1.2.3.4.` (the WHATWG URL rule: the last label is
    a number)."""
    labels = host.removesuffix(".").split(".")
    if not _IPV4_NUMBER.match(labels[-1]):
        return False
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return True
    return False


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (raises OSError when it does not)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, vets and connects to the vetted address (see the module's docstring)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, *, allow_private: bool) -> None:
        self._inner = inner
        self._allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if self._allow_private:
            return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            addresses = await resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"Could not resolve {host}: {exc}") from exc
        if not addresses or not all(is_public(a) for a in addresses):
            raise AddressRefused(f"{host} resolves to a private or reserved address; not connecting.")
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("Unix sockets are not a webhook destination.")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport on a connection pool whose network backend is `GuardedBackend` (httpx does
    not take a network backend itself, so the pool it built is replaced by an equivalent one)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=max(100, settings.webhook_delivery_concurrency),
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(httpcore.AnyIOBackend(), allow_private=allows_private(settings)),
        )
