"""The services of FlowMaestro itself that no node may ever reach (finding 1a of issue 30).

The Prefect API has no authentication by default and whoever can write a flow run's state
can make other processes unpickle what they choose; the FlowMaestro API, the store's
database and Redis hold every owner's data. The outbound policy refuses them whatever
``FLOWMAESTRO_HTTP_ALLOW_HOSTS`` says (even ``*``): allowing ``127.0.0.1`` for a local model
must not open loopback's other ports.

Each service is a host and port taken from the settings of the process that runs nodes
(``HandlerSettings``: the URLs a worker uses itself). Its host name is resolved when the
policy is built, so ``localhost:4200`` and ``127.0.0.1:4200`` are the same service; and a
service on a local address (loopback, ``0.0.0.0``, one of this machine's addresses) is
matched on every local address, since a service bound to all interfaces answers on each.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from node_handlers.addresses import IPAddress, forms_of, is_local, normalize_host
from node_handlers.settings import HandlerSettings

logger = logging.getLogger(__name__)

PREFECT_API = "the Prefect API"
FLOWMAESTRO_API = "the FlowMaestro API"
DATABASE = "the FlowMaestro database"
PREFECT_DATABASE = "the Prefect database"
REDIS = "Redis"

_WEB_PORTS = {"http": 80, "https": 443}
_REDIS_PORTS = {"redis": 6379, "rediss": 6379, "valkey": 6379, "valkeys": 6379}
_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}


@dataclass(frozen=True)
class ServiceAddress:
    """Where one protected service listens, as configured."""

    name: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.name} ({host}:{self.port})"


@dataclass(frozen=True)
class ProtectedService:
    """A service address with what its host resolved to when the policy was built."""

    service: ServiceAddress
    addresses: frozenset[IPAddress]
    local: bool
    """It listens on this machine: every local address on its port reaches it."""

    def matches(self, host: str, address: IPAddress, port: int, own: frozenset[IPAddress]) -> bool:
        if port != self.service.port:
            return False
        if host == self.service.host:
            return True
        if self.local and is_local(address, own):
            return True
        return any(form in self.addresses for form in forms_of(address))


def _host_port(url: str, default_ports: dict[str, int]) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in default_ports or not parts.hostname:
        return None  # not TCP (a unix socket), or not a URL
    return parts.hostname, port or default_ports[scheme]


def _database(name: str, url: str | None) -> ServiceAddress | None:
    if not url:
        return None
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    backend = parsed.get_backend_name()
    if backend not in _DATABASE_PORTS or not parsed.host:
        return None  # SQLite, or a unix socket
    return ServiceAddress(name, parsed.host, parsed.port or _DATABASE_PORTS[backend])


def _web(name: str, url: str | None) -> ServiceAddress | None:
    found = _host_port(url, _WEB_PORTS) if url else None
    return ServiceAddress(name, *found) if found else None


def _redis(url: str | None) -> ServiceAddress | None:
    found = _host_port(url, _REDIS_PORTS) if url else None
    return ServiceAddress(REDIS, *found) if found else None


def _bind(name: str, bind: str | None) -> ServiceAddress | None:
    return _web(name, f"http://{bind}") if bind else None


def service_addresses(settings: HandlerSettings) -> tuple[ServiceAddress, ...]:
    """The protected services of the installation ``settings`` describe, each once."""
    prefect_url = settings.prefect_api_url or f"http://127.0.0.1:{settings.server_port}/api"  # the embedded server
    found = [
        _web(PREFECT_API, prefect_url),
        _web(FLOWMAESTRO_API, settings.public_url),
        _bind(FLOWMAESTRO_API, settings.api_bind),
        _database(DATABASE, settings.database_url),
        _database(PREFECT_DATABASE, settings.prefect_database_url),
        _redis(settings.redis_url),
        _redis(settings.cache_lock_redis_url),
        _redis(settings.prefect_redis_messaging_url),
    ]
    return tuple(dict.fromkeys(s for s in found if s is not None))


def resolve_now(host: str, port: int) -> frozenset[IPAddress]:
    """The addresses ``host`` resolves to now (blocking: called once, when a policy is built)."""
    try:
        return frozenset([ipaddress.ip_address(host)])
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        # Still refused by name; an address it gets later is not known here.
        logger.warning("cannot resolve %s:%s to protect it from workflow nodes: %s", host, port, exc)
        return frozenset()
    return frozenset(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)


def protect(
    services: Iterable[ServiceAddress],
    own: frozenset[IPAddress],
    resolve: Callable[[str, int], frozenset[IPAddress]] = resolve_now,
) -> tuple[ProtectedService, ...]:
    protected = []
    for service in services:
        service = ServiceAddress(service.name, normalize_host(service.host), service.port)
        addresses = resolve(service.host, service.port)
        local = service.host == "localhost" or any(is_local(address, own) for address in addresses)
        protected.append(ProtectedService(service, addresses, local))
    return tuple(protected)
