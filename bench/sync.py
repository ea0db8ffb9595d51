"""Inter-listener sync: N headless Chromium listener pages, some joining late, one narration.

Runs the real server in this process and N pages of the real listener page in
Debian's Chromium (Playwright, executable_path). Every page records, for each
chunk, the local time at which its first sample will be heard; the server and
the browsers share this machine's clock, so that time is directly comparable
with the chunk's starts_at_ms. Prints, over all chunks:

- skew: the spread (max - min) between listeners of when a chunk sounds;
- error: each listener's distance from the server timeline;
- offset error: each page's estimated clock offset (the truth is 0 here).

    .venv/bin/python bench/sync.py [--listeners 8] [--late 2] [--chromium /usr/bin/chromium]
"""

import argparse
import asyncio
import json
import shutil
import statistics

import websockets
from harness import running_server  # first: it puts the project and tests/ on sys.path

# isort: split
from chromium import FLAGS
from playwright.async_api import async_playwright
from texts import HARBOUR

NARRATION = " ".join(HARBOUR)
SETTINGS = {
    "tts": {"engine": "tone", "tone_ms_per_char": 55},
    "timeline": {"lead_ms": 800, "sentence_gap_ms": 250, "request_gap_ms": 600},
}


async def open_listener(browser, url: str):
    page = await browser.new_page()
    await page.goto(url)
    await page.click("#tune")
    await page.wait_for_function("window.broadcaster.socket.clock.samples.length >= 8")
    return page


async def next_message(ws, kind: str) -> dict:
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == kind:
            return message


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def report(records: list[dict], chunk_ids: list[str], offsets: list[float], listeners: int, late: int) -> None:
    skew, error = [], []
    for chunk_id in chunk_ids:
        heard = [r[chunk_id] for r in records if chunk_id in r]
        times = [h["sounds_at_local_ms"] for h in heard]
        skew.append(max(times) - min(times))
        error += [abs(h["sounds_at_local_ms"] - h["starts_at_ms"]) for h in heard]
    offset_error = [abs(o) for o in offsets]
    print(f"listeners: {listeners} ({late} joined late), chunks: {len(chunk_ids)}, samples: {len(error)}")
    for name, values in [
        ("inter-listener skew", skew),
        ("error vs server timeline", error),
        ("clock-offset estimation error", offset_error),
    ]:
        print(f"{name:32s} p50 {pct(values, 50):6.2f} ms   p95 {pct(values, 95):6.2f} ms   max {max(values):6.2f} ms")


async def main(listeners: int, late: int, chromium: str) -> None:
    async with running_server(SETTINGS) as server, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        url = f"{server.base_url}/c/{server.channel}"
        async with websockets.connect(server.ws_url) as ws:
            await next_message(ws, "snapshot")
            pages = [await open_listener(browser, url) for _ in range(listeners - late)]
            from broadcaster.client import submit

            _, body = await submit(server.base_url, server.channel, NARRATION, server.token)
            chunk_ids = [(await next_message(ws, "audio_chunk_ready"))["chunk_id"]]
            for _ in range(late):  # join while the narration is under way
                await asyncio.sleep(1.5)
                pages.append(await open_listener(browser, url))
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "audio_chunk_ready":
                    chunk_ids.append(message["chunk_id"])
                if message["type"] == "request_played" and message["request_id"] == body["request_id"]:
                    break
        records = []
        for page in pages:
            entries = await page.evaluate("window.broadcaster.stats.scheduled")
            records.append({e["chunk_id"]: e for e in entries})
        offsets = [await page.evaluate("window.broadcaster.socket.clock.offsetMs") for page in pages]
        await browser.close()
    report(records, chunk_ids, offsets, listeners, late)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=8)
    parser.add_argument("--late", type=int, default=2, help="how many of them join mid-narration")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    asyncio.run(main(args.listeners, min(args.late, args.listeners - 1), args.chromium))
