"""The outbound policy of http and llm nodes (spec section 12).

A canvas must not turn the engine into a proxy to what only the engine can reach: its own
loopback services, the private network, link-local addresses and the cloud metadata
endpoint are refused unless ``FLOWMAESTRO_HTTP_ALLOW_HOSTS`` lists the host or network.

The check is made on the resolved addresses, at the moment a connection is opened, and
the connection goes to an address that was checked (``PinnedNetworkBackend``): a DNS
answer cannot change between the check and the connection (rebinding), and every redirect
hop opens its connection through the same check. Every client of http and llm nodes comes
from ``pinned_client()``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Generic, TypeVar

import httpcore
import httpx

from node_handlers.base import NodeError
from node_handlers.settings import handler_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ALLOW_HOSTS_ENV = "FLOWMAESTRO_HTTP_ALLOW_HOSTS"
ALLOW_ALL = "*"

# Most specific first: the first match names the reason in the refusal.
_REFUSED_NETWORKS: tuple[tuple[str, str], ...] = (
    ("169.254.169.254/32", "the cloud metadata endpoint"),
    ("fd00:ec2::254/128", "the cloud metadata endpoint"),
    ("127.0.0.0/8", "a loopback address"),
    ("::1/128", "a loopback address"),
    ("0.0.0.0/8", "an unspecified address"),
    ("::/128", "an unspecified address"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("100.64.0.0/10", "a private (carrier-grade NAT) address"),
    ("fc00::/7", "a private (unique local) address"),
    ("169.254.0.0/16", "a link-local address"),
    ("fe80::/10", "a link-local address"),
    ("224.0.0.0/4", "a multicast address"),
    ("ff00::/8", "a multicast address"),
    ("240.0.0.0/4", "a reserved or broadcast address"),
)
REFUSED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), reason) for net, reason in _REFUSED_NETWORKS)


def refusal_reason(address: IPAddress) -> str | None:
    """Why the policy refuses ``address`` by default, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    for network, reason in REFUSED_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    return None


@dataclass(frozen=True)
class EgressPolicy:
    """What ``FLOWMAESTRO_HTTP_ALLOW_HOSTS`` allows beyond public addresses."""

    allow_all: bool = False
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, allow_hosts: str) -> EgressPolicy:
        entries = [e.strip() for e in allow_hosts.split(",") if e.strip()]
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(normalize_host(entry))
        return cls(allow_all=ALLOW_ALL in entries, hosts=frozenset(hosts), networks=tuple(networks))

    def allows_host(self, host: str) -> bool:
        return self.allow_all or normalize_host(host) in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        if self.allow_all or refusal_reason(address) is None:
            return True
        return any(address.version == net.version and address in net for net in self.networks)


def normalize_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


@lru_cache(maxsize=8)
def _parse_policy(allow_hosts: str) -> EgressPolicy:
    return EgressPolicy.parse(allow_hosts)


def current_policy() -> EgressPolicy:
    return _parse_policy(handler_settings().http_allow_hosts)


class EgressDenied(NodeError):
    def __init__(self, message: str, *, host: str, address: str | None):
        # Not retryable: the policy does not change between attempts.
        super().__init__(message, retry_class=None, error_type="EgressDenied",
                         details={"host": host, "address": address})


def deny(host: str, address: IPAddress, reason: str) -> EgressDenied:
    return EgressDenied(
        f"outbound request to {host} refused: it resolves to {address}, {reason}. To allow it, add the host "
        f"({host}) or the address or its network (e.g. {address}) to {ALLOW_HOSTS_ENV} (comma-separated; "
        f"'*' allows everything)", host=host, address=str(address))


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order (tests replace this)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])  # drop an IPv6 zone id
        if address not in addresses:
            addresses.append(address)
    return addresses


def check_addresses(host: str, addresses: Sequence[IPAddress], policy: EgressPolicy) -> None:
    """Raise ``EgressDenied`` unless every address may be reached (or the host name is allowed)."""
    if policy.allows_host(host):
        return
    for address in addresses:
        if not policy.allows_address(address):
            raise deny(host, address, refusal_reason(address) or "not allowed")


async def allowed_addresses(host: str, port: int) -> list[IPAddress]:
    """Resolve ``host`` and check the result against the current policy."""
    host = normalize_host(host)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    addresses = [literal] if literal is not None else await resolve_host(host, port)
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    check_addresses(host, addresses, current_policy())
    return addresses


async def check_url(url: str | httpx.URL) -> None:
    """Refuse ``url`` (an llm node's base_url, for instance) if the policy does not allow
    its host. A clear early answer; the connection itself is checked again when opened."""
    parsed = httpx.URL(str(url))
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise NodeError(f"{url!r} is not an http(s) URL", error_type="InvalidUrl")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        await allowed_addresses(parsed.host, port)
    except OSError as exc:
        raise NodeError(f"cannot resolve {parsed.host}: {exc}", retry_class="connection",
                        error_type="ConnectError") from exc


class PinnedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses the policy allows, and to exactly the
    address that was checked.

    Why a network backend: httpcore asks it for a connection with the URL's host name.
    Resolving and checking here, then connecting to the checked IP, leaves everything else
    as it was: the Host header, TLS SNI and certificate verification still use the host
    name, and the connection pool is still keyed by host name (rewriting URLs to IPs
    instead would let two host names on one IP share a TLS connection verified for only
    one of them).
    """

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None):
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await allowed_addresses(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        last_error: Exception | None = None
        for address in addresses:  # like a browser: the next address if one refuses
            try:
                return await self._inner.connect_tcp(str(address), port, timeout=timeout,
                                                     local_address=local_address, socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable from workflow nodes")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose connection pool uses ``PinnedNetworkBackend``.

    httpx 0.28 does not take a network backend, so the pool it built is replaced by an
    identical one that has ours (``handle_async_request`` and ``aclose`` only use ``_pool``).
    No proxy: a proxy would resolve the host itself, out of the policy's reach.
    """

    def __init__(self, *, limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),
                 http2: bool = False):
        super().__init__(trust_env=False, limits=limits, http2=http2)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True, http2=http2,
            network_backend=PinnedNetworkBackend(),
        )


def _refuse_all_cookies() -> CookieJar:
    # A client shared by every workflow must not carry one run's cookies into another.
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


def pinned_client(**kwargs: Any) -> httpx.AsyncClient:
    """A new client whose connections obey the egress policy (no proxy, no cookie jar)."""
    return httpx.AsyncClient(transport=PinnedTransport(), trust_env=False, cookies=_refuse_all_cookies(),
                             **kwargs)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class PerLoopCache(Generic[K, V]):
    """Process-wide objects (clients with their connection pools) kept per event loop.

    Pooled connections belong to the loop that opened them, so each running loop gets its
    own, and those of closed loops are dropped. The current egress policy is part of the
    key: connections opened under another policy are not reused.
    """

    def __init__(self, *, is_closed: Callable[[V], bool], close: Callable[[V], Awaitable[None]]):
        self._by_loop: dict[asyncio.AbstractEventLoop, dict[tuple[EgressPolicy, K], V]] = {}
        self._is_closed = is_closed
        self._close = close
        _CACHES.append(self)

    def get(self, key: K, create: Callable[[], V]) -> V:
        loop = asyncio.get_running_loop()
        for stale in [other for other in self._by_loop if other.is_closed()]:
            del self._by_loop[stale]
        entries = self._by_loop.setdefault(loop, {})
        full_key = (current_policy(), key)
        value = entries.get(full_key)
        if value is None or self._is_closed(value):
            value = entries[full_key] = create()
        return value

    async def close_current_loop(self) -> None:
        for value in self._by_loop.pop(asyncio.get_running_loop(), {}).values():
            await self._close(value)


_CACHES: list[PerLoopCache[Any, Any]] = []


async def close_clients() -> None:
    """Close the clients http and llm nodes opened in the running event loop: call it before
    that loop ends (a server's shutdown), so that their connections close cleanly."""
    for cache in _CACHES:
        await cache.close_current_loop()
