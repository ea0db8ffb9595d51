"""The listener page is served for known channels only, with its assets."""

import aiohttp
import pytest

from broadcaster.runtime.accounts import set_listen_key


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


async def test_browsers_get_pages_in_words_for_the_root_and_unknown_channels(server):
    """A browser (it asks for HTML) opening the server's address or a mistyped link gets a page that
    says what happened, not JSON; API clients still get the JSON error."""
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/", headers=browser) as resp:
            assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
            assert "/c/&lt;channel&gt;" in await resp.text()
        for path in ("/c/no<such>", "/c/nosuch/console"):
            async with http.get(f"{server.base_url}{path}", headers=browser) as resp:
                text = await resp.text()
                assert resp.status == 404 and "text/html" in resp.headers["Content-Type"]
                assert "No such channel" in text and "<such>" not in text
        async with http.get(f"{server.base_url}/") as resp:
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


async def test_pages_say_what_they_may_load_and_the_console_may_not_be_framed(server):
    """Both pages load only their own files (a Content-Security-Policy); the console, which holds a
    producer token, refuses to be framed, so no other page can click its buttons through a frame."""
    async with aiohttp.ClientSession() as http:
        for path, framed in ((f"/c/{server.channel}", True), (f"/c/{server.channel}/console", False)):
            async with http.get(server.base_url + path) as resp:
                policy = resp.headers["Content-Security-Policy"]
                assert "default-src 'self'" in policy and resp.headers["X-Content-Type-Options"] == "nosniff"
                assert ("frame-ancestors 'none'" in policy) is not framed
                assert (resp.headers.get("X-Frame-Options") == "DENY") is not framed


async def producer_info(server) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{server.base_url}/api/channels/{server.channel}/producer",
            headers={"Authorization": f"Bearer {server.token}"},
        ) as resp:
            assert resp.status == 200
            return await resp.json()


async def test_producer_info_links_the_listener_page_and_says_when_it_needs_a_key(server):
    """The console's log-in check gives the listener page's link, which opens it while the channel is
    public; once private it says so (the key is kept only as a digest, so the link cannot carry it)."""
    info = await producer_info(server)
    assert info["private"] is False and info["listen_url"] == f"/c/{server.channel}"
    async with aiohttp.ClientSession() as http:
        async with http.get(server.base_url + info["listen_url"]) as resp:
            assert resp.status == 200 and "/static/listener.js" in await resp.text()
    await set_listen_key(server.station.store, server.channel, private=True)
    info = await producer_info(server)
    assert info["private"] is True and info["listen_url"] == f"/c/{server.channel}"


@pytest.mark.server_config({"server": {"public_url": "https://radio.example.org/"}})
async def test_producer_info_links_the_listener_page_on_the_public_address(server):
    """With a public address configured, the link is the one others reach the server at."""
    assert (await producer_info(server))["listen_url"] == f"https://radio.example.org/c/{server.channel}"
