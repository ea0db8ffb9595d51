"""Who may do what: producer writes need the channel's token (and stay under the write rate);
a private channel needs its listen key, or the producer token, for anything that reveals or plays it.
The credential that admitted a long-lived connection is kept, and checked again while it stays open
(web/revocation.py)."""

from aiohttp import web

from broadcaster.auth import Admission, Credential, valid_channel_name
from broadcaster.errors import Unauthorized

from .clients import client_address
from .http_util import bearer_token
from .keys import ACCESS, STATION, TRUSTED


def remote_of(request: web.Request) -> str:
    """The client's address (web/clients.py): through a trusted balancer, or a peer that forwarded it."""
    return client_address(request, request.app[TRUSTED])


async def producer_channel(request: web.Request, append: bool = False) -> str:
    """The channel name, once the write rate (`append`: the rate of appends to open narrations) and the
    producer token are checked (404 before 401)."""
    name = request.match_info["channel"]
    station = request.app[STATION]
    # Checked before the channel is looked up, so a flood costs no database reads; a malformed name is a
    # 404 below, and made-up well-formed ones take buckets from a limiter that keeps at most 10 000.
    if valid_channel_name(name):
        access = request.app[ACCESS]
        (access.check_append_rate if append else access.check_write_rate)(remote_of(request), name)
    await station.runner(name)
    await station.gate.check_token(name, bearer_token(request))
    return name


async def producer_credential(request: web.Request, name: str, token: str | None) -> Credential:
    """What admits a producer's console: its token, checked like a producer write (and counted in the rate)."""
    request.app[ACCESS].check_write_rate(remote_of(request), name)
    return Credential(Admission.CONSOLE, await request.app[STATION].gate.check_token(name, token))


async def require_listener(request: web.Request, name: str) -> Credential:
    """Pass if the channel is public, or the request shows its listen key or producer token; returns which.
    The token only as `Authorization: Bearer`: in a URL it would end up in logs and browser histories."""
    key = request.query.get("key") or request.headers.get("X-Listen-Key")
    try:
        return await request.app[STATION].gate.check_listener(name, key, bearer_token(request))
    except Unauthorized:
        request.app[ACCESS].refused("listen_key")
        raise
