"""Regenerate docs/listener.png and docs/console.png from the real pages (Debian's Chromium).

.venv/bin/python scripts/screenshots.py
"""

import asyncio
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from harness import running_server  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

from broadcaster.client import submit  # noqa: E402

FLAGS = ["--autoplay-policy=no-user-gesture-required", "--no-sandbox", "--disable-background-networking"]
SETTINGS = {"tts": {"engine": "tone", "tone_ms_per_char": 70}}
STORY = [
    "The tavern door creaks open. A cold wind follows the stranger inside. Every head turns.",
    "The bard stops mid-song.",
    "Roll for initiative!",
]


async def main() -> None:
    async with running_server(SETTINGS, channel="dragon-campaign") as server, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        listener = await browser.new_page(viewport={"width": 420, "height": 760})
        await listener.goto(f"{server.base_url}/c/{server.channel}")
        await listener.click("#tune")
        console = await browser.new_page(viewport={"width": 900, "height": 760})
        await console.goto(f"{server.base_url}/c/{server.channel}/console#token={server.token}")
        for text in STORY:
            await submit(server.base_url, server.channel, text, server.token)
        await listener.wait_for_selector("#captions span.current")
        await asyncio.sleep(2.5)
        await console.fill("#text", "The stranger lowers her hood")
        await listener.screenshot(path=str(ROOT / "docs" / "listener.png"))
        await console.screenshot(path=str(ROOT / "docs" / "console.png"))
        await browser.close()


if __name__ == "__main__":
    asyncio.run(main())
