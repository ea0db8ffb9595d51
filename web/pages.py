"""Browser pages. Plain HTML and JavaScript served as files: no build step."""

from html import escape
from pathlib import Path

from aiohttp import web

from broadcaster.errors import NotFound, Unauthorized

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
    name = (await request.app[STATION].runner(request.match_info["channel"])).name  # unknown channel: a clear 404
    try:
        await require_listener(request, name)
    except Unauthorized as exc:
        return _private_page(name, exc)
    return web.FileResponse(STATIC_DIR / "listener.html", headers=PAGE_HEADERS)


async def console_page(request: web.Request) -> web.FileResponse:
    """The producer console; it asks for the token itself and every action checks it."""
    await request.app[STATION].runner(request.match_info["channel"])
    return web.FileResponse(STATIC_DIR / "console.html", headers=CONSOLE_HEADERS)


async def static_file(request: web.Request) -> web.FileResponse:
    """Only files that ship in static/ (no paths, no dot-files), with a JSON 404 otherwise."""
    name = request.match_info["name"]
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise NotFound(f"no static file {name[:80]!r}")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


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
