"""Who may do what: producer writes need the channel's token (and stay under the write rate);
a private channel needs its listen key, or the producer token, for anything that reveals or plays it."""

from aiohttp import web

from broadcaster.auth import valid_channel_name
from broadcaster.errors import Unauthorized

from .http_util import bearer_token
from .keys import ACCESS, STATION


def remote_of(request: web.Request) -> str:
    return request.remote or "unknown"


async def producer_channel(request: web.Request) -> str:
    """The channel name, once the write rate and the producer token are checked (404 before 401)."""
    name = request.match_info["channel"]
    station = request.app[STATION]
    if valid_channel_name(name):  # a malformed one is a 404 below; only real names get a bucket
        request.app[ACCESS].check_write_rate(remote_of(request), name)
    await station.runner(name)
    await station.gate.check_token(name, bearer_token(request))
    return name


async def require_listener(request: web.Request, name: str) -> None:
    """Pass if the channel is public, or the request shows its listen key or producer token."""
    key = request.query.get("key") or request.headers.get("X-Listen-Key")
    token = bearer_token(request) or request.query.get("token")
    try:
        await request.app[STATION].gate.check_listener(name, key, token)
    except Unauthorized:
        request.app[ACCESS].refused("listen_key")
        raise
