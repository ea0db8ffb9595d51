"""Who the client is: its address, as the connection shows it or as a trusted balancer reports it.

Behind a load balancer every connection comes from the balancer. When its address is among
`[server] trusted_proxies`, the client is the right-most address in `X-Forwarded-For` that is not
itself a trusted proxy (each proxy appends the address it took the request from, so addresses to
the left of a trusted one's entry are whatever the client claimed). A request a peer of the
cluster forwarded carries the client it took it from (web/forward.py)."""

import ipaddress
from collections.abc import Iterable

from aiohttp import web

PEER_CLIENT = web.RequestKey("peer_client", str)  # the client of a request a peer forwarded
TRUSTED = web.AppKey("trusted_proxies", tuple)  # the networks of [server] trusted_proxies
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(entries: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(request: web.Request, trusted: tuple[Network, ...]) -> str:
    if (forwarded := request.get(PEER_CLIENT)) is not None:
        return forwarded
    address = request.remote or "unknown"
    if not trusted or not _trusted(address, trusted):
        return address
    hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", ()) for hop in value.split(",")]
    for hop in reversed(hops):
        if hop and not _trusted(hop, trusted):
            return hop[:64]
    return address
