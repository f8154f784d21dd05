"""The outbound policy of http and llm nodes (spec section 12; issue 30, findings 1a and 14).

A canvas must not turn the engine into a proxy to what only the engine can reach. Nodes
reach globally routable addresses (``node_handlers.addresses``: IPv4 inside IPv6 forms is
checked too); loopback, private, link-local, metadata and this machine's own addresses are
refused unless ``FLOWMAESTRO_HTTP_ALLOW_HOSTS`` allows them (``host``, ``host:port``,
``network``, ``network:port``). FlowMaestro's own services (the Prefect API, the API, the
database, Redis: ``node_handlers.protected``) are refused whatever it says.

The check is made on the resolved addresses, at the moment a connection is opened, and
the connection goes to an address that was checked (``PinnedNetworkBackend``): a DNS
answer cannot change between the check and the connection (rebinding), and every redirect
hop opens its connection through the same check. Every client of http and llm nodes comes
from ``pinned_client()``, with the policy of the settings it was built from
(``HandlerServices.egress``): there is no process-wide policy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpcore
import httpx

from node_handlers.addresses import IPAddress, IPNetwork, forms_of, interface_addresses, normalize_host, refusal_reason
from node_handlers.base import NodeError
from node_handlers.protected import ProtectedService, ServiceAddress, protect

ALLOW_HOSTS_ENV = "FLOWMAESTRO_HTTP_ALLOW_HOSTS"
ALLOW_ALL = "*"


@dataclass(frozen=True)
class AllowRule:
    """One entry of ``FLOWMAESTRO_HTTP_ALLOW_HOSTS``: a host name or a network, on one port or all."""

    host: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    @classmethod
    def parse(cls, entry: str) -> AllowRule:
        """``host``, ``host:port``, ``network``, ``network:port``; IPv6 in brackets when a
        port follows (``[::1]:8080``, ``[fd00::/8]:443``); a bare IPv6 address has no port."""
        target, port = entry, None
        if entry.startswith("["):
            inside, bracket, rest = entry[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"{entry!r}: an IPv6 entry is [address] or [address]:port")
            target, port = inside, rest[1:] if rest else None
        elif entry.count(":") == 1:
            target, port = entry.split(":")
        try:
            network: IPNetwork | None = ipaddress.ip_network(target, strict=False)
        except ValueError:
            network = None
        host = None if network is not None else normalize_host(target)
        if host is not None and (not host or not all(part.isalnum() or part in "-_." for part in host)):
            raise ValueError(f"{entry!r} is neither a host name nor an IP network")
        return cls(host=host, network=network, port=_port(entry, port))

    def matches(self, host: str, address: IPAddress, port: int | None) -> bool:
        """Whether a connection to ``host`` at ``address`` on ``port`` is one this rule allows
        (``port`` None: on no port in particular, only for a rule of any port)."""
        if self.port is not None and port != self.port:
            return False
        if self.host is not None:
            return normalize_host(host) == self.host
        assert self.network is not None
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        return any(a.version == self.network.version and a in self.network for a in (address, mapped) if a)


def _port(entry: str, port: str | None) -> int | None:
    if port is None:
        return None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r}: {port!r} is not a port (1-65535)")
    return int(port)


@dataclass(frozen=True)
class EgressPolicy:
    """Where http and llm nodes may connect: globally routable addresses, plus what
    ``FLOWMAESTRO_HTTP_ALLOW_HOSTS`` allows, minus FlowMaestro's own services (always)."""

    allow_all: bool = False
    rules: tuple[AllowRule, ...] = ()
    protected: tuple[ProtectedService, ...] = ()
    own_addresses: frozenset[IPAddress] = frozenset()
    """This machine's interface addresses: global ones are refused too, unless an entry with a port allows them."""

    @classmethod
    def parse(
        cls,
        allow_hosts: str,
        protected: tuple[ProtectedService, ...] = (),
        own_addresses: frozenset[IPAddress] = frozenset(),
    ) -> EgressPolicy:
        entries = [e.strip() for e in allow_hosts.split(",") if e.strip()]
        rules = tuple(AllowRule.parse(entry) for entry in entries if entry != ALLOW_ALL)
        return cls(allow_all=ALLOW_ALL in entries, rules=rules, protected=protected, own_addresses=own_addresses)

    def protected_service(self, host: str, address: IPAddress, port: int) -> ServiceAddress | None:
        """The service of FlowMaestro's own that ``address:port`` (or ``host``) reaches, if any."""
        host = normalize_host(host)
        for service in self.protected:
            if service.matches(host, address, port, self.own_addresses):
                return service.service
        return None

    def refusal(self, host: str, address: IPAddress, port: int | None) -> str | None:
        """Why a connection to ``address`` on ``port`` (None: on some port) for ``host`` is
        refused, or None. Protected services are checked apart (``protected_service``)."""
        if self.allow_all:
            return None
        rules = [r for r in self.rules if r.matches(host, address, r.port if port is None else port)]
        if self._is_own(address):
            if any(rule.port is not None for rule in rules):
                return None
            return (
                "an address of this machine (allow it with a port, e.g. "
                f"{_show(address)}:{port or 8080}, to reach one of its services)"
            )
        if rules:
            return None
        return refusal_reason(address)

    def _is_own(self, address: IPAddress) -> bool:
        return any(form in self.own_addresses and not form.is_loopback for form in forms_of(address))

    def allows_host(self, host: str, port: int | None = None) -> bool:
        """Whether an entry allows ``host`` by name (on ``port``; None: on some port)."""
        return self.allow_all or any(
            r.host == normalize_host(host) and (port is None or r.port in (None, port)) for r in self.rules
        )

    def allows_address(self, address: IPAddress, port: int | None = None) -> bool:
        """Whether ``address`` may be reached (on ``port``; None: on some port), services aside."""
        return self.refusal("", address, port) is None


def _show(address: IPAddress | str) -> str:
    return f"[{address}]" if ":" in str(address) else str(address)


def make_policy(allow_hosts: str, services: tuple[ServiceAddress, ...]) -> EgressPolicy:
    """The policy of these settings: resolves the services' names and reads this machine's
    addresses now (blocking, but a few milliseconds)."""
    own = interface_addresses()
    try:
        return EgressPolicy.parse(allow_hosts, protect(services, own), own)
    except ValueError as exc:
        raise NodeError(f"{ALLOW_HOSTS_ENV}: {exc}", error_type="InvalidSetting") from None


class EgressDenied(NodeError):
    def __init__(self, message: str, *, host: str, address: str | None, service: str | None = None):
        # Not retryable: the policy does not change between attempts.
        details = {"host": host, "address": address, **({"service": service} if service else {})}
        super().__init__(message, retry_class=None, error_type="EgressDenied", details=details)


def deny(host: str, address: IPAddress, reason: str, port: int | None = None) -> EgressDenied:
    target = f"{_show(host)}:{port}" if port is not None else host
    shown = f"{_show(address)}:{port}" if port is not None else str(address)
    return EgressDenied(
        f"outbound request to {target} refused: it resolves to {address}, {reason}. To allow it, add the host "
        f"({target}) or the address or its network (e.g. {shown}) to {ALLOW_HOSTS_ENV} (comma-separated "
        f"host:port or network:port entries, the port optional; '*' allows everything but FlowMaestro's own "
        f"services)",
        host=host,
        address=str(address),
    )


def deny_service(host: str, address: IPAddress, port: int, service: ServiceAddress) -> EgressDenied:
    return EgressDenied(
        f"outbound request to {_show(host)}:{port} refused: it reaches {service}, which workflow nodes may never "
        f"call, whatever {ALLOW_HOSTS_ENV} says",
        host=host,
        address=str(address),
        service=service.name,
    )


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


def check_addresses(host: str, addresses: Sequence[IPAddress], policy: EgressPolicy, port: int) -> None:
    """Raise ``EgressDenied`` unless every address may be reached on ``port`` for ``host``."""
    for address in addresses:
        service = policy.protected_service(host, address, port)
        if service is not None:
            raise deny_service(host, address, port, service)
        reason = policy.refusal(host, address, port)
        if reason is not None:
            raise deny(host, address, reason, port)


async def allowed_addresses(host: str, port: int, policy: EgressPolicy) -> list[IPAddress]:
    """Resolve ``host`` and check the result against ``policy`` (``HandlerServices.egress``)."""
    host = normalize_host(host)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    addresses = [literal] if literal is not None else await resolve_host(host, port)
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    check_addresses(host, addresses, policy, port)
    return addresses


async def check_url(url: str | httpx.URL, policy: EgressPolicy) -> None:
    """Refuse ``url`` (an llm node's base_url, for instance) if the policy does not allow
    its host. A clear early answer; the connection itself is checked again when opened."""
    parsed = httpx.URL(str(url))
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise NodeError(f"{url!r} is not an http(s) URL", error_type="InvalidUrl")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        await allowed_addresses(parsed.host, port, policy)
    except OSError as exc:
        raise NodeError(
            f"cannot resolve {parsed.host}: {exc}", retry_class="connection", error_type="ConnectError"
        ) from exc


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

    def __init__(self, policy: EgressPolicy, inner: httpcore.AsyncNetworkBackend | None = None):
        """``policy``: the one its connections obey."""
        self._inner = inner or httpcore.AnyIOBackend()
        self._policy = policy

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await allowed_addresses(host, port, self._policy)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        last_error: Exception | None = None
        for address in addresses:  # like a browser: the next address if one refuses
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable from workflow nodes")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose connection pool uses ``PinnedNetworkBackend``.

    httpx 0.28 does not take a network backend, so the pool it built is replaced by an
    identical one that has ours (``handle_async_request`` and ``aclose`` only use ``_pool``).
    No proxy: a proxy would resolve the host itself, out of the policy's reach.
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),
        http2: bool = False,
        policy: EgressPolicy,
    ):
        super().__init__(trust_env=False, limits=limits, http2=http2)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=http2,
            network_backend=PinnedNetworkBackend(policy=policy),
        )


def _refuse_all_cookies() -> CookieJar:
    # A client shared by every workflow must not carry one run's cookies into another.
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


def pinned_client(*, policy: EgressPolicy, **kwargs: Any) -> httpx.AsyncClient:
    """A new client whose connections obey ``policy`` (``HandlerServices.egress``; no proxy,
    no cookie jar)."""
    return httpx.AsyncClient(
        transport=PinnedTransport(policy=policy), trust_env=False, cookies=_refuse_all_cookies(), **kwargs
    )
