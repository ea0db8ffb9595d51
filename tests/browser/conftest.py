"""A real Chromium (the distribution's package, never a downloaded one), driven by Playwright.

Without Chromium on the machine these tests skip, so `scripts/test` passes on a bare Python
install; CI installs Chromium and sets BROADCASTER_REQUIRE_BROWSER=1, which turns that skip
into a failure.
"""

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from chromium import FLAGS, chromium_path
from speakers import Listeners, PulseServer, pulseaudio_binaries


@pytest.fixture
async def browser() -> AsyncIterator:
    path = chromium_path()
    if path is None:
        if os.environ.get("BROADCASTER_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required here (BROADCASTER_REQUIRE_BROWSER=1) but was not found")
        pytest.skip("no Chromium on this machine (apt-get install chromium, or set BROADCASTER_CHROMIUM)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=path, args=FLAGS, headless=True)
        yield launched
        await launched.close()


class PageErrors:
    """Collects uncaught errors from pages, and anything their Content-Security-Policy refused, so a
    test can assert there were none."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page) -> None:
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._refused)

    def _refused(self, message) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.errors.append(message.text)


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
async def pulse(tmp_path, request: pytest.FixtureRequest) -> AsyncIterator[PulseServer]:
    """A PulseAudio daemon of the test's own with a sink per listener (tests/speakers.py); how many
    listeners: the test's `speakers` mark, else 2. Started and stopped in a thread: a test server in
    this process must keep running meanwhile (a loop held still past its server lease, 10 s, made
    it stop the whole test process as a lost lease does)."""
    if pulseaudio_binaries() is None or chromium_path() is None:
        if os.environ.get("BROADCASTER_REQUIRE_BROWSER") == "1":
            pytest.fail("PulseAudio and Chromium are required here (BROADCASTER_REQUIRE_BROWSER=1)")
        pytest.skip("no PulseAudio or Chromium on this machine (apt-get install pulseaudio chromium)")
    marker = request.node.get_closest_marker("speakers")
    started = PulseServer(tmp_path, listeners=marker.args[0] if marker else 2)
    await asyncio.to_thread(started.start)
    try:
        yield started
    finally:
        await asyncio.to_thread(started.stop)


@pytest.fixture
async def listeners(server, pulse: PulseServer) -> AsyncIterator[Listeners]:
    """Listener pages on the test server's channel, each in its own Chromium playing into its own sink
    of `pulse`; closed after the test. Their output to PulseAudio runs at realtime priority where the
    tests may raise it (as root in CI): at normal priority a machine busy with other work starves it
    into underruns that have nothing to do with the page under test (docs/performance.md)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        opened = Listeners(pw, pulse, f"{server.base_url}/c/{server.channel}", chromium_path(), realtime=True)
        try:
            yield opened
        finally:
            await opened.close()
