"""In a cluster, any process takes any request: what only a channel's owner can do is passed to it.

A producer's write (a narration, an upload, a queue control) changes a channel, and only the
process that runs the channel's clock may change it. A process that does not run it sends the
request on to the owner's internal address (the `holder_url` of the channel's lease), streaming
the body both ways, and returns the owner's answer unchanged: the same status, the same JSON.
A read that finds its channel run elsewhere and cannot be answered here (the queue view of a
channel whose owner has published nothing yet) goes the same way; the queue view otherwise, and
live.mp3 and progressive streams, are served here (web/api.py, web/replica.py).

Peers prove themselves with a secret shared through Redis, and say who the client was, so that
the owner's per-address rate limits and logs see the real client and not the peer. A request
that claims to be forwarded without the secret is refused. During a takeover (no live owner)
the request waits up to one lease for the new owner, then is answered 503 with Retry-After.
"""

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from broadcaster.errors import BadInput
from broadcaster.runtime.ownership import CHANNEL
from broadcaster.runtime.station import NotHere, Station
from db.leases import Leases

from .clients import PEER_CLIENT, TRUSTED, client_address

log = logging.getLogger(__name__)

PEER = "X-Broadcaster-Peer"  # the cluster's shared secret: this request was forwarded by a peer
CLIENT = "X-Broadcaster-Client"  # the address the peer took the request from
HOPS = "X-Broadcaster-Hops"
WRITES = ("POST", "PUT", "DELETE")
# Not Content-Length or Content-Encoding: aiohttp has decoded a compressed body, so what goes on is the
# decoded body, chunked.
SENT_ON = ("Authorization", "X-Listen-Key", "Content-Type", "Accept", "Range", "Icy-MetaData", "User-Agent")
PEER_ONLY = "peer:"  # the name of a route only the cluster's servers may call begins with it
SENT_BACK = ("Content-Type", "Retry-After", "Cache-Control", "Content-Range", "Accept-Ranges", "ETag")
SENT_BACK_PREFIX = ("icy-", "X-Request-Id")


class NoOwner(BadInput):
    status = 503
    code = "channel_starting"
    retry_after_s = 1


class BadPeer(BadInput):
    status = 403
    code = "forbidden"


class Forwarder:
    def __init__(
        self,
        leases: Leases,
        holder: Callable[[], str],
        secret: Callable[..., Awaitable[str]],  # secret(fresh=True) reads it again
        wait_s: float,
        counted: Callable[[], None] = lambda: None,
    ):
        self.counted = counted
        self.leases = leases
        self.holder = holder  # this process's lease holder id: an owner that is us is still loading
        self.secret = secret
        self.wait_s = wait_s
        self.session: aiohttp.ClientSession | None = None
        self.forwarded = 0

    async def start(self) -> None:
        # No total timeout: live.mp3 and progressive streams run for as long as their listener stays.
        timeout = aiohttp.ClientTimeout(total=None, connect=2, sock_connect=2)
        self.session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def holder_url(self, channel: str) -> str | None:
        """The internal address of the channel's live owner if another process holds it now (one read)."""
        holding = await self.leases.current(CHANNEL + channel)
        if holding is not None and holding.holder != self.holder() and holding.holder_url:
            return holding.holder_url
        return None

    async def holder_and_secret(self, channel: str) -> tuple[str | None, str]:
        """`holder_url` and the secret to show its process, read at once (one from each store)."""
        url, secret = await asyncio.gather(self.holder_url(channel), self.secret(fresh=True))
        return url, secret

    async def owner_url(self, channel: str) -> str:
        """The internal address of the channel's owner, waiting out a takeover for up to one lease."""
        deadline = time.monotonic() + self.wait_s
        while (url := await self.holder_url(channel)) is None:
            if time.monotonic() >= deadline:
                raise NoOwner(f"channel {channel!r} is changing servers; try again in a moment")
            await asyncio.sleep(0.05)
        return url

    async def peer_client(self, request: web.Request) -> str | None:
        """The original client's address if a peer forwarded this request; BadPeer for a false claim."""
        if (header := request.headers.get(PEER)) is None:
            return None
        claimed = header.encode("utf-8", "surrogateescape")  # a header of any bytes is a false claim, not a 500
        if not hmac.compare_digest(claimed, (await self.secret()).encode()):
            if not hmac.compare_digest(claimed, (await self.secret(fresh=True)).encode()):
                raise BadPeer("expected a request forwarded by a server of this cluster, got a false claim")
        return request.headers.get(CLIENT) or request.remote

    async def forward(
        self, request: web.Request, channel: str, url: str | None = None, secret: str | None = None
    ) -> web.StreamResponse:
        """Send the request on to the channel's owner (at `url`, showing `secret`, if already looked up) and
        relay its answer."""
        # Forwarded once already (any value but "0"), which only a peer may say: a client's header is ignored.
        if request.get(PEER_CLIENT) is not None and request.headers.get(HOPS, "0") != "0":
            raise NoOwner(f"channel {channel!r} is changing servers; try again in a moment")
        url = url or await self.owner_url(channel)
        headers = {name: request.headers[name] for name in SENT_ON if name in request.headers}
        # Read afresh for each forward (one Redis read): a secret cached from before a Redis restart
        # would be refused by every peer.
        headers |= {
            PEER: secret or await self.secret(fresh=True),
            CLIENT: client_address(request, request.app[TRUSTED]),
        }
        headers[HOPS] = "1"
        body = request.content if request.can_read_body else None
        self.forwarded += 1
        self.counted()
        try:
            async with self.session.request(
                request.method, url + request.path_qs, headers=headers, data=body, allow_redirects=False
            ) as answer:
                return await _relay(request, answer)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            log.warning("could not forward %s %s to %s: %s", request.method, request.path, url, exc)
            raise NoOwner(f"channel {channel!r} is changing servers; try again in a moment") from None


async def _relay(request: web.Request, answer: aiohttp.ClientResponse) -> web.StreamResponse:
    response = web.StreamResponse(status=answer.status, reason=answer.reason)
    for name, value in answer.headers.items():
        if name in SENT_BACK or name.startswith(SENT_BACK_PREFIX):
            response.headers[name] = value
    if answer.content_length is not None:
        response.content_length = answer.content_length
    await response.prepare(request)
    async for data in answer.content.iter_any():
        await response.write(data)
    await response.write_eof()
    return response


async def through_owner(forwarder: Forwarder, station: Station, request: web.Request, handler) -> web.StreamResponse:  # noqa: ANN001
    """Writes to a channel run elsewhere are forwarded before their body is read; a read that finds
    its channel run elsewhere (NotHere) is forwarded after the fact (it read no body)."""
    client = await forwarder.peer_client(request)
    if client is not None:
        request[PEER_CLIENT] = client
    elif (request.match_info.route.name or "").startswith(PEER_ONLY):  # never passed on with our secret
        raise BadPeer("expected a request from a server of this cluster")
    channel = request.match_info.get("channel")
    if channel is not None and request.method in WRITES and channel not in station.runners:
        # A channel with a live owner exists: its address and the peer secret, read at once on the way.
        # Without one, 404 here for a channel that does not exist, else wait for its owner (a takeover,
        # or it is being loaded).
        url, secret = await forwarder.holder_and_secret(channel)
        if url is None:
            await station.channel_id(channel)
        return await forwarder.forward(request, channel, url, secret)
    try:
        return await handler(request)
    except NotHere as exc:
        if request.method != "GET":
            raise NoOwner(f"channel {exc.channel!r} is changing servers; try again in a moment") from None
        return await forwarder.forward(request, exc.channel)
