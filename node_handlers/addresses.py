"""What kind of address an IP is, for the outbound policy (``node_handlers.egress``).

Only globally routable addresses are reachable by default. Python's ``is_global`` alone is
not enough: it calls several IPv6 forms that carry an IPv4 address global (IPv4-compatible
``::127.0.0.1``, NAT64 ``64:ff9b::7f00:1``, 6to4 ``2002:7f00:1::``) although they can lead
to the IPv4 address inside, so that address is decoded and checked too. A few ranges that
Python 3.11 still calls global (site-local, local-use NAT64, multicast, IPv6 documentation)
are listed explicitly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import ifaddr

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

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
    ("fec0::/10", "a private (site-local) address"),
    ("64:ff9b:1::/48", "a private (local-use NAT64) address"),
    ("169.254.0.0/16", "a link-local address"),
    ("fe80::/10", "a link-local address"),
    ("224.0.0.0/4", "a multicast address"),
    ("ff00::/8", "a multicast address"),
    ("240.0.0.0/4", "a reserved or broadcast address"),
    ("3fff::/20", "a documentation address"),
    ("5f00::/16", "a reserved (segment routing) address"),
)
REFUSED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), reason) for net, reason in _REFUSED_NETWORKS
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
_LOW_32_BITS = 0xFFFFFFFF

_MAPPED = "an IPv4-mapped form"
_COMPATIBLE = "an IPv4-compatible form"
_TRANSLATED = "an IPv4-translated form"
_DEPRECATED_FORMS = (_COMPATIBLE, _TRANSLATED)
"""Forms no network routes any more: refused even when the address inside is public."""


def embedded_ipv4(address: IPAddress) -> tuple[tuple[str, ipaddress.IPv4Address], ...]:
    """Every IPv4 address ``address`` carries, each with the name of the form that carries it.

    IPv4-mapped ``::ffff:a.b.c.d`` is the IPv4 address itself to the socket layer;
    IPv4-compatible ``::a.b.c.d`` and IPv4-translated ``::ffff:0:a.b.c.d`` are deprecated
    forms some stacks still route; NAT64 (``64:ff9b::/96``, local-use ``64:ff9b:1::/48`` in
    its /96 layout), 6to4 (``2002::/16``) and Teredo (``2001::/32``: server and client) reach
    the IPv4 address through a gateway.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return ()
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    value = int(address)
    if address.ipv4_mapped is not None:
        found.append((_MAPPED, address.ipv4_mapped))
    if value >> 32 == 0 and value > 1:  # not :: nor ::1
        found.append((_COMPATIBLE, ipaddress.IPv4Address(value & _LOW_32_BITS)))
    if address in _IPV4_TRANSLATED:
        found.append((_TRANSLATED, ipaddress.IPv4Address(value & _LOW_32_BITS)))
    if address in _NAT64 or address in _NAT64_LOCAL:
        found.append(("a NAT64 form", ipaddress.IPv4Address(value & _LOW_32_BITS)))
    if address.sixtofour is not None:
        found.append(("a 6to4 form", address.sixtofour))
    if address.teredo is not None:
        server, client = address.teredo
        found += [("a Teredo form (client)", client), ("a Teredo form (server)", server)]
    return tuple(found)


def _own_reason(address: IPAddress) -> str | None:
    for network, reason in REFUSED_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    if not address.is_global:
        return "not a globally routable address"
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why the policy refuses ``address`` by default, or None for a globally routable one."""
    for form, inner in embedded_ipv4(address):
        inner_reason = _own_reason(inner)
        if inner_reason is not None:
            return f"{form} of {inner}, {inner_reason}"
        if form in _DEPRECATED_FORMS:
            return f"{form} of {inner} (deprecated; use {inner} itself)"
        if form == _MAPPED:
            return None  # the socket layer connects to the public IPv4 address itself
    return _own_reason(address)


def forms_of(address: IPAddress) -> tuple[IPAddress, ...]:
    """``address`` and every IPv4 address inside it."""
    return (address, *(inner for _form, inner in embedded_ipv4(address)))


def interface_addresses() -> frozenset[IPAddress]:
    """Every address bound to one of this machine's network interfaces (loopback included).

    ``ifaddr`` reads them with ``getifaddrs()``: all interfaces and all their addresses,
    which the other ways (a UDP socket's source address, ``getaddrinfo(gethostname())``)
    miss when a machine has several.
    """
    found: set[IPAddress] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip  # IPv6: (address, flowinfo, scope id)
            try:
                found.add(ipaddress.ip_address(str(text).split("%")[0]))
            except ValueError:
                continue
    return frozenset(found)


def normalize_host(host: str) -> str:
    """A host name or IP as compared: lower case, no brackets, no trailing dot."""
    return host.strip().strip("[]").rstrip(".").lower()


def is_local(address: IPAddress, own: Iterable[IPAddress]) -> bool:
    """Whether a connection to ``address`` (or to an IPv4 address inside it) stays on this
    machine: loopback, the unspecified address (Linux connects 0.0.0.0 to itself), or an
    address of one of its interfaces."""
    own = frozenset(own)
    return any(form.is_loopback or form.is_unspecified or form in own for form in forms_of(address))
