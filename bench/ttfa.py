"""Time to first audio: POST of narration to its first chunk announced, against raw Piper.

Runs the real server (Piper voice, SQLite file, loopback port) in this process
and, in the same run, times raw Piper synthesizing the same first sentence as a
user gets it: `PiperVoice.load(model)` with its defaults, `synthesize` of the
sentence, every chunk's samples taken. Prints medians and the ratios: POST to
the first `audio_chunk_ready` (target within 1.5x raw Piper, docs/performance.md),
to the first byte of the progressive stream, and to the first chunk's
`starts_at_ms` (when it is heard: the lead on top), with 8 listeners on the
channel that fetch every chunk and report when they had it, as the listener
page does, so that the lead follows them (a warm-up narration teaches it).

    .venv/bin/python bench/ttfa.py [--trials 7] [--window-ms 3000] [--listeners 8] [--piper-nice N]
"""

import argparse
import asyncio
import json
import statistics
import time

import aiohttp
import websockets
from harness import running_server  # first: it puts the project on sys.path
from listeners import Behaviour, PageListener, Stats

from web.keys import CONFIG, ENGINE, STATION

TEXTS = [
    "The party reaches the gates of the old city. Guards in silver armour block the way.",
    "Rain hammers the roof of the inn. Somewhere upstairs, a door slams shut.",
    "A raven lands on the altar and tilts its head. It seems to be waiting for something.",
]


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def plain_voice():
    """The bundled voice as a user of Piper gets it: PiperVoice.load with its defaults."""
    from piper import PiperVoice

    from tts.piper_engine import default_model_path

    return PiperVoice.load(default_model_path())


async def raw_piper_ms(voice, sentence: str) -> float:
    start = time.perf_counter()
    await asyncio.to_thread(lambda: [c.audio_int16_array for c in voice.synthesize(sentence)])
    elapsed = ms_since(start)
    await asyncio.sleep(0.3)  # its onnxruntime threads spin a while after: not into the server's time
    return elapsed


async def audience(base_url: str, channel: str, count: int) -> list[PageListener]:
    host, port = base_url.removeprefix("http://").split(":")
    pages = [PageListener(host, int(port), channel, Behaviour(), Stats()) for _ in range(count)]
    for page in pages:
        page.task = asyncio.create_task(page.run())
    await asyncio.gather(*(page.connected.wait() for page in pages))
    return pages


async def one_trial(base: str, token: str, ws, text: str) -> tuple[float, float, float]:
    """(POST to the first chunk announced, to the stream's first byte, to the first chunk's starts_at_ms)."""
    announced: asyncio.Future = asyncio.get_running_loop().create_future()
    request_id = None

    async def watch() -> float:
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "audio_chunk_ready" and message["request_id"] == request_id and not announced.done():
                announced.set_result((ms_since(start), message["starts_at_ms"] - wall_start_ms))
            if message["type"] == "request_played" and message["request_id"] == request_id:
                return

    async with aiohttp.ClientSession() as http:
        start, wall_start_ms = time.perf_counter(), time.time() * 1000
        watching = asyncio.create_task(watch())
        async with http.post(
            f"{base}/api/channels/bench/requests", json={"text": text}, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            request_id = (await resp.json())["request_id"]
        async with http.get(f"{base}/api/audio/stream/{request_id}") as resp:
            await resp.content.readany()
            first_byte_ms = ms_since(start)
        announced_ms, starts_in_ms = await announced
        await watching
        return announced_ms, first_byte_ms, starts_in_ms


async def streamed_trial(base: str, token: str, ws, text: str) -> float:
    """An open narration whose first sentence is written, then completed by the next append (the next
    sentence's first words): from sending that append to the first sentence's chunk announced."""
    first, rest = text.split(". ", 1)
    url, headers = f"{base}/api/channels/bench/requests", {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"text": first + ".", "open": True}, headers=headers) as resp:
            request_id = (await resp.json())["request_id"]
        start = time.perf_counter()
        async with http.post(f"{url}/{request_id}/text", json={"text": " " + rest}, headers=headers) as resp:
            assert resp.status == 202
        announced_ms = None
        while announced_ms is None:
            message = json.loads(await ws.recv())
            if message["type"] == "audio_chunk_ready" and message["request_id"] == request_id:
                announced_ms = ms_since(start)
        async with http.post(f"{url}/{request_id}/text", json={"text": "", "final": True}, headers=headers) as resp:
            assert resp.status == 202
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "request_played" and message["request_id"] == request_id:
                return announced_ms


async def main(trials: int, window_ms: int, listeners: int, nice: int | None) -> None:
    raw, announced, ttfb, starts, streamed = [], [], [], [], []
    tts = {"engine": "piper", "piper_window_ms": window_ms} | ({} if nice is None else {"piper_nice": nice})
    async with (
        running_server({"tts": tts}) as server,
        websockets.connect(server.ws_url) as ws,
    ):
        timeline = server.app[CONFIG].timeline
        pages = await audience(server.base_url, server.channel, listeners)
        voice = plain_voice()
        await raw_piper_ms(voice, "Warm up the voice.")
        await server.app[ENGINE].synthesize("Warm up the voice.")
        await one_trial(server.base_url, server.token, ws, "The lead learns what these listeners need. Then on.")
        await asyncio.sleep(1.0)
        for i in range(trials):
            text = TEXTS[i % len(TEXTS)]
            raw.append(await raw_piper_ms(voice, text.split(". ")[0] + "."))
            first_chunk, first_byte, starts_in = await one_trial(server.base_url, server.token, ws, text)
            announced.append(first_chunk)
            ttfb.append(first_byte)
            starts.append(starts_in)
            await asyncio.sleep(1.0)  # let the channel go idle: each trial is a fresh start
            streamed.append(await streamed_trial(server.base_url, server.token, ws, text))
            await asyncio.sleep(1.0)
        lead_now = server.app[STATION].runners[server.channel].channel.lead_ms
        for page in pages:
            await page.stop()
            page.task.cancel()
    raw_ms, starts_ms = statistics.median(raw), statistics.median(starts)
    announced_ms, ttfb_ms = statistics.median(announced), statistics.median(ttfb)
    print(f"trials: {trials}, piper_window_ms = {window_ms}, piper_nice = {server.app[CONFIG].tts.piper_nice}")
    print(f"raw piper (PiperVoice.load), first sentence  median {raw_ms:7.1f} ms")
    print(
        f"POST -> first chunk announced   median {announced_ms:7.1f} ms   {announced_ms / raw_ms:.2f}x raw  (target <= 1.50x)"
    )
    print(f"POST -> first stream byte       median {ttfb_ms:7.1f} ms   {ttfb_ms / raw_ms:.2f}x raw")
    streamed_ms = statistics.median(streamed)
    print(
        f"open narration: append completing the first sentence -> it announced  median {streamed_ms:7.1f} ms   "
        f"{streamed_ms / raw_ms:.2f}x raw  (target <= 1.50x)"
    )
    print(
        f"POST -> starts_at_ms (audible)  median {starts_ms:7.1f} ms   (target <= 400 ms; first chunk ready + the lead, "
        f"{lead_now} ms at the end for {listeners} listeners; from {timeline.lead_ms} down to {timeline.min_lead_ms})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--window-ms", type=int, default=3000, help="[tts] piper_window_ms (0: decode whole)")
    parser.add_argument("--listeners", type=int, default=8, help="page-like listeners on the channel")
    parser.add_argument("--piper-nice", type=int, help="[tts] piper_nice (default: the server's)")
    args = parser.parse_args()
    asyncio.run(main(args.trials, args.window_ms, args.listeners, args.piper_nice))
