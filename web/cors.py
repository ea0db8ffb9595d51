"""Cross-origin access: pages on other origins may play and read PUBLIC channels, nothing else.

A tabletop tool or an office dashboard embeds a public channel: its queue, chunk audio,
progressive streams and live.mp3 answer an allowed Origin (`[server] cors_origins`) with
Access-Control-Allow-Origin, and their preflights with 204. Private channels and producer
routes send no CORS headers and refuse preflights, so browsers keep them same-origin;
clients that are not browsers send no Origin and are unaffected. The listener WebSocket
has no CORS, so its handshake's Origin is checked here instead (`check_socket_origin`).
"""

from collections.abc import Sequence
from urllib.parse import urlsplit

from aiohttp import web

from broadcaster.core.ids import is_id
from broadcaster.errors import BadInput, NotFound, Unauthorized

from .keys import CONFIG, STATION

READ_METHODS = "GET, HEAD"
PUBLIC_ROUTES = {  # path: the methods a page on another origin may use on a public channel
    "/api/channels/{channel}/audio/queue": READ_METHODS,
    "/api/audio/chunks/{chunk_id}": READ_METHODS,
    "/api/audio/stream/{request_id}": READ_METHODS,
    "/api/channels/{channel}/beds/{track_id}/{chunk_id}": READ_METHODS,  # the ambience under the voice
    "/c/{channel}/live.mp3": READ_METHODS,
    "/api/audio/played/{chunk_id}": "POST",  # a simple request (no body, no headers): the page may read the reply
}
EXPOSED = (
    "Content-Range, Accept-Ranges, Content-Length, icy-metaint, icy-name, icy-description, icy-br, icy-sr, "
    "ice-audio-info, icy-pub"
)
MAX_AGE_S = 600
DEFAULT_PORTS = {"http": 80, "https": 443}


class OriginRefused(BadInput):
    status = 403
    code = "origin_not_allowed"


def allowed_origin(origin: str | None, allowed: Sequence[str]) -> str | None:
    """The Access-Control-Allow-Origin value for `origin` under the `allowed` list, or None for no CORS headers."""
    if not origin:
        return None
    if "*" in allowed:
        return "*"
    return origin if _normal(origin) in {_normal(a) for a in allowed} else None


def same_origin(origin: str, host: str, public_url: str = "") -> bool:
    """The page comes from this server: its Origin names the Host it reached us at, or the public_url
    (behind a proxy). Schemes are not compared: a proxy that ends TLS forwards plain HTTP."""
    authority = _authority(origin)
    if authority is None:
        return False
    ours = {_authority(f"http://{host}"), _authority(f"https://{host}")}
    if public_url:
        ours.add(_authority(public_url))
    return authority in ours


def _normal(origin: str) -> str:
    parts = urlsplit(origin.strip().lower())
    try:
        port = parts.port
    except ValueError:
        return origin
    if port is None or DEFAULT_PORTS.get(parts.scheme) == port:
        return f"{parts.scheme}://{parts.hostname}"
    return f"{parts.scheme}://{parts.hostname}:{port}"


def _authority(url: str) -> str | None:
    """host:port with the scheme's default port made explicit; None for "null" and other non-URLs."""
    parts = urlsplit(url.strip().lower())
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    return f"{parts.hostname}:{port}" if parts.hostname and port else None


# -- aiohttp -----------------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    """Preflight routes for the public reads, and the allow headers on their responses."""
    for path in PUBLIC_ROUTES:
        app.router.add_route("OPTIONS", path, preflight)
    app.on_response_prepare.append(_allow_headers)


async def preflight(request: web.Request) -> web.Response:
    """OPTIONS: 204 with the allowed methods and headers for a public channel and an allowed origin;
    403 (no allow headers) otherwise."""
    origin = request.headers.get("Origin")
    methods = PUBLIC_ROUTES[_path(request)]
    if origin is None:
        return web.Response(status=204, headers={"Allow": f"{methods}, OPTIONS"})
    allow = allowed_origin(origin, request.app[CONFIG].server.cors_origins)
    if allow is None:
        raise OriginRefused(f"expected a page from one of the origins in [server] cors_origins, got {origin[:100]!r}")
    if not await _public(request, await _channel_of(request)):
        raise OriginRefused(
            "this channel is private: only pages served by this server may read it "
            "(cross-origin access is for public channels)"
        )
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": allow,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": "Range, Icy-MetaData",  # a web player asks for ICY titles
            "Access-Control-Max-Age": str(MAX_AGE_S),
            **_vary(allow),
        },
    )


async def _allow_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: allow headers on a public read of a public channel for an allowed Origin."""
    if request.method == "OPTIONS" or _path(request) not in PUBLIC_ROUTES:
        return
    allowed = request.app[CONFIG].server.cors_origins
    if "*" not in allowed:  # the answer depends on the Origin: caches must keep one per origin
        response.headers["Vary"] = ", ".join(filter(None, (response.headers.get("Vary"), "Origin")))
    allow = allowed_origin(request.headers.get("Origin"), allowed)
    if allow is None:
        return
    try:
        if not await _public(request, await _channel_of(request)):
            return
    except BadInput:  # an unknown channel or id: the response is already the error
        return
    response.headers["Access-Control-Allow-Origin"] = allow
    response.headers["Access-Control-Expose-Headers"] = EXPOSED


async def check_socket_origin(request: web.Request, channel: str) -> None:
    """Before the WebSocket upgrade: a page on another origin may listen to a public channel if its origin
    is allowed; a private channel's socket is same-origin only. No Origin (not a browser) always passes."""
    origin = request.headers.get("Origin")
    server = request.app[CONFIG].server
    if origin is None or same_origin(origin, request.host, server.public_url):
        return
    if not await _public(request, channel):
        raise OriginRefused(
            f"channel {channel!r} is private: its socket is open only to pages from the same "
            f"origin as this server, got Origin {origin[:100]!r}"
        )
    if allowed_origin(origin, server.cors_origins) is None:
        raise OriginRefused(
            f"expected a page from this server or one of the origins in [server] cors_origins, "
            f"got Origin {origin[:100]!r}"
        )


def _path(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


async def _channel_of(request: web.Request) -> str:
    info, station = request.match_info, request.app[STATION]
    if "channel" in info:
        return (await station.runner(info["channel"])).name
    if "chunk_id" in info:
        chunk = await station.find_chunk(_valid_id(info["chunk_id"]))
        return (await station.find_request(chunk.request_id)).channel
    return (await station.find_request(_valid_id(info["request_id"]))).channel


def _valid_id(value: str) -> str:
    if not is_id(value):
        raise NotFound(f"expected an id of 16 hex digits, got {value[:40]!r}")
    return value


async def _public(request: web.Request, channel: str) -> bool:
    """A channel anyone may listen to: no listen key is needed."""
    try:
        await request.app[STATION].gate.check_listener(channel, None, None)
    except Unauthorized:
        return False
    return True


def _vary(allow: str) -> dict[str, str]:
    return {} if allow == "*" else {"Vary": "Origin"}
