"""Browser pages. Plain HTML and JavaScript served as files: no build step."""

from pathlib import Path

from aiohttp import web

from .keys import STATION

STATIC_DIR = Path(__file__).parent / "static"


async def listener_page(request: web.Request) -> web.FileResponse:
    await request.app[STATION].runner(request.match_info["channel"])  # unknown channel: a clear 404
    return web.FileResponse(STATIC_DIR / "listener.html", headers={"Cache-Control": "no-cache"})
