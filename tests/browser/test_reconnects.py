"""How the pages come back after the server closed or refused their socket, and what they say meanwhile:
in a real browser, against a real server on loopback."""

import asyncio
import re

import pytest
from aiohttp import web
from conftest import start_server

from broadcaster.runtime.accounts import set_listen_key
from web.app import create_app
from web.keys import CONFIG, STATION


def count_sockets(page) -> list[str]:
    """Every WebSocket the page opens (or tries to), by URL."""
    opened: list[str] = []
    page.on("websocket", lambda ws: opened.append(ws.url))
    return opened


async def open_console(browser, server, page_errors):
    console = await browser.new_page(bypass_csp=True)
    page_errors.watch(console)
    await console.goto(f"{server.base_url}/c/{server.channel}/console")
    return console


async def log_in(console, token: str) -> None:
    await console.fill("#token", token)
    await console.click("#login button[type=submit]")


def seconds_left(text: str) -> int:
    found = re.search(r"retrying in (\d+) s", text)
    assert found, f"expected 'retrying in N s', got {text!r}"
    return int(found.group(1))


# One producer write allowed, then one every 10 s: the console's log-in check takes it, so its socket's
# auth (a producer write too) is refused with an error and 4029.
@pytest.mark.server_config({"limits": {"producer_write_burst": 1, "producer_writes_per_minute": 6}})
async def test_a_console_refused_over_the_write_rate_waits_and_says_why(browser, server, page_errors):
    """A console whose auth is refused for the write rate (an error, then 4029) does not come back twice a
    second (its retries would spend the allowance Send needs): it shows the server's reason and counts down."""
    console = await open_console(browser, server, page_errors)
    sockets = count_sockets(console)
    await log_in(console, server.token)
    await console.wait_for_selector("#connection[data-state=reconnecting]")
    text = await console.text_content("#connection")
    assert "producer writes" in text, text
    await asyncio.sleep(6)
    later = await console.text_content("#connection")
    assert "producer writes" in later and seconds_left(later) < seconds_left(text), (text, later)
    await asyncio.sleep(4)
    assert len(sockets) <= 2, sockets
    assert page_errors.errors == []


@pytest.mark.parametrize("failure", [429, 503, "unreachable"])
async def test_a_console_keeps_its_token_when_the_log_in_check_fails_for_now(browser, server, page_errors, failure):
    """A remembered token whose check meets a busy or unreachable server is kept, and the console says to
    try again (one click does, once the server answers); only a 401 forgets it."""
    console = await open_console(browser, server, page_errors)
    key = f"broadcaster.token.{server.channel}"
    await console.evaluate("([key, token]) => localStorage.setItem(key, token)", [key, server.token])

    async def fail(route):
        if failure == "unreachable":
            await route.abort()
        else:
            await route.fulfill(status=failure, json={"error": {"code": "busy", "message": "busy just now"}})

    await console.route("**/api/channels/*/producer", fail)
    await console.reload()
    await console.wait_for_selector("#login-error:not(:empty)")
    assert "try again" in await console.text_content("#login-error")
    assert await console.evaluate("(key) => localStorage.getItem(key)", key) == server.token
    await console.unroute("**/api/channels/*/producer")
    await console.click("#login button[type=submit]")
    await console.wait_for_selector("#desk:not([hidden])")
    await console.evaluate("([key, token]) => localStorage.setItem(key, token)", [key, "bc_replaced"])
    await console.reload()
    await console.wait_for_selector("#login-error:not(:empty)")
    assert "Refused" in await console.text_content("#login-error")
    assert await console.evaluate("(key) => localStorage.getItem(key)", key) is None
    assert page_errors.errors == []


async def test_a_console_token_in_the_address_leaves_it_even_when_refused(browser, server, page_errors):
    """A #token= fragment is taken out of the address bar whatever comes of the log-in."""
    console = await browser.new_page(bypass_csp=True)
    page_errors.watch(console)
    await console.goto(f"{server.base_url}/c/{server.channel}/console#token=bc_wrong")
    await console.wait_for_selector("#login-error:not(:empty)")
    assert "#" not in console.url and "bc_wrong" not in console.url
    assert page_errors.errors == []


async def test_the_console_links_the_listener_page_and_says_when_it_needs_the_key(browser, server, page_errors):
    """The console's link opens the listener page; for a private channel, whose key the server keeps only
    as a digest, it says that listeners need the link with the key instead of linking to a refusal."""
    console = await open_console(browser, server, page_errors)
    await log_in(console, server.token)
    await console.wait_for_selector("#desk:not([hidden])")
    async with console.expect_navigation():
        await console.click("#listen-link")
    await console.wait_for_selector("#tune")
    await set_listen_key(server.station.store, server.channel, private=True)
    await console.goto(f"{server.base_url}/c/{server.channel}/console")
    await console.wait_for_selector("#desk:not([hidden])")
    assert await console.is_hidden("#listen-link") and await console.is_visible("#listen-private")
    assert page_errors.errors == []


async def test_a_page_whose_server_restarts_with_the_channel_private_says_so(browser, tmp_path, page_errors):
    """The server stops, the channel is made private, the server starts again: the listener page, whose
    question why its sockets fail went unanswered while the server was away, asks again and says why."""
    runner, server = await start_server(tmp_path)
    port = int(server.base_url.rsplit(":", 1)[1])
    config, running = server.app[CONFIG], runner
    try:
        page = await browser.new_page(bypass_csp=True)
        page_errors.watch(page)
        sockets = count_sockets(page)
        await page.goto(f"{server.base_url}/c/{server.channel}")
        await page.click("#tune")
        await page.wait_for_selector("#connection[data-state=live]")
        running = None
        await runner.cleanup()
        async with asyncio.timeout(15):  # the first socket, then three that failed: it asked, and got no answer
            while len(sockets) < 4:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1)
        app = create_app(config)
        running = web.AppRunner(app)
        await running.setup()
        await set_listen_key(app[STATION].store, server.channel, private=True)
        await web.TCPSite(running, "127.0.0.1", port).start()
        await page.wait_for_selector("#connection[data-state=refused]", timeout=30_000)
        assert "private" in await page.text_content("#connection")
        assert page_errors.errors == []
    finally:
        if running:
            await running.cleanup()
