"""Browser pages. Plain HTML and JavaScript served as files: no build step."""

from html import escape
from pathlib import Path

from aiohttp import web

from broadcaster.errors import NotFound, Unauthorized
from broadcaster.runtime.beds import is_there

from .access import require_listener
from .keys import STATION

STATIC_DIR = Path(__file__).parent / "static"
# The pages load only their own files and talk only to this server (audio, the socket); nothing
# inline runs. The listener page may be framed (a tabletop tool embedding it); the console, which
# holds a producer token, may not be, so that no other page can click its buttons through a frame.
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'"
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": PAGE_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
CONSOLE_HEADERS = PAGE_HEADERS | {
    "Content-Security-Policy": f"{PAGE_POLICY}; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}


async def listener_page(request: web.Request) -> web.StreamResponse:
    try:
        name = (await request.app[STATION].runner(request.match_info["channel"])).name
    except NotFound as exc:
        return _no_channel(request, exc)
    try:
        await require_listener(request, name)
    except Unauthorized as exc:
        return _private_page(name, exc)
    return web.FileResponse(STATIC_DIR / "listener.html", headers=PAGE_HEADERS)


async def console_page(request: web.Request) -> web.StreamResponse:
    """The producer console; it asks for the token itself and every action checks it."""
    try:
        await request.app[STATION].runner(request.match_info["channel"])
    except NotFound as exc:
        return _no_channel(request, exc)
    return web.FileResponse(STATIC_DIR / "console.html", headers=CONSOLE_HEADERS)


async def static_file(request: web.Request) -> web.FileResponse:
    """Only files that ship in static/ (no paths, no dot-files), with a JSON 404 otherwise."""
    name = request.match_info["name"]
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or not is_there(path, "file"):
        raise NotFound(f"no static file {name[:80]!r}")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


async def index(request: web.Request) -> web.Response:
    """The server's own address, opened in a browser: say what it is and where the pages are. (No list
    of channels: a private channel's name is its producer's business.)"""
    if not _browser(request):
        raise NotFound("nothing at '/'; see docs/protocol.md for the routes")
    return _notice(
        200,
        "Broadcaster",
        "This Broadcaster server is running.",
        "Listeners open their channel's link, <code>/c/&lt;channel&gt;</code>; producers its console, "
        "<code>/c/&lt;channel&gt;/console</code>.",
    )


def _no_channel(request: web.Request, exc: NotFound) -> web.StreamResponse:
    """A mistyped link in a browser: a page in words; an API client gets the JSON error."""
    if not _browser(request):
        raise exc
    name = escape(request.match_info["channel"][:64])
    return _notice(
        404, "No such channel", f"There is no channel called <b>{name}</b> here.", "Check the link you were given."
    )


def _browser(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


def _notice(status: int, title: str, text: str, hint: str) -> web.Response:
    body = (
        f"<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{escape(title)}</title><link rel=stylesheet href=/static/style.css>"
        f"<main class=notice><h1>{escape(title)}</h1><p>{text}</p><p>{hint}</p></main>"
    )
    return web.Response(status=status, text=body, content_type="text/html", headers=PAGE_HEADERS)


def _private_page(name: str, exc: Unauthorized) -> web.Response:
    """A person followed a link without the key: tell them in words, not JSON."""
    text = escape(exc.message)
    body = (
        f"<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{escape(name)}: private channel</title><link rel=stylesheet href=/static/style.css>"
        f"<main class=notice><h1>{escape(name)} is a private channel</h1><p>{text}</p>"
        f"<p>Open the full link the producer shared; it ends in <code>?key=…</code>.</p></main>"
    )
    headers = PAGE_HEADERS | {"Cache-Control": "no-store"}
    return web.Response(status=401, text=body, content_type="text/html", headers=headers)
