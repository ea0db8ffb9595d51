"""The listener page is served for known channels only, with its assets."""

import aiohttp


async def test_listener_page_is_served_with_its_script(server):
    """GET /c/{channel} returns the page, and the script it loads exists."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/c/{server.channel}") as resp:
            assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
            assert "/static/listener.js" in await resp.text()
        async with http.get(f"{server.base_url}/static/listener.js") as resp:
            assert resp.status == 200 and "time_sync" in await resp.text()


async def test_listener_page_for_unknown_channel_is_404(server):
    """An unknown channel's page answers 404 with an explanation."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/c/nowhere") as resp:
            assert resp.status == 404
            assert "nowhere" in (await resp.json())["error"]["message"]
