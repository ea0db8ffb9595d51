"""Browser pages. Plain HTML and JavaScript served as files: no build step."""

from pathlib import Path

from aiohttp import web

from broadcaster.errors import NotFound

from .keys import STATION

STATIC_DIR = Path(__file__).parent / "static"


async def listener_page(request: web.Request) -> web.FileResponse:
    await request.app[STATION].runner(request.match_info["channel"])  # unknown channel: a clear 404
    return web.FileResponse(STATIC_DIR / "listener.html", headers={"Cache-Control": "no-cache"})


async def console_page(request: web.Request) -> web.FileResponse:
    """The producer console; it asks for the token itself and every action checks it."""
    await request.app[STATION].runner(request.match_info["channel"])
    return web.FileResponse(STATIC_DIR / "console.html", headers={"Cache-Control": "no-cache"})


async def static_file(request: web.Request) -> web.FileResponse:
    """Only files that ship in static/ (no paths, no dot-files), with a JSON 404 otherwise."""
    name = request.match_info["name"]
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise NotFound(f"no static file {name[:80]!r}")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})
