"""Time to first audio: POST of narration to its first chunk announced, against raw Piper.

Runs the real server (Piper voice, SQLite file, loopback port) in this process
and, in the same run, times raw Piper synthesizing the same first sentence as a
user gets it: `PiperVoice.load(model)` with its defaults, `synthesize` of the
sentence, every chunk's samples taken. Prints medians and the ratios: POST to
the first `audio_chunk_ready` (target within 1.5x raw Piper, docs/performance.md),
to the first byte of the progressive stream, and to the first chunk's
`starts_at_ms` (when it is heard: the lead on top).

    .venv/bin/python bench/ttfa.py [--trials 7] [--window-ms 3000]
"""

import argparse
import asyncio
import json
import statistics
import time

import aiohttp
import websockets
from harness import running_server  # first: it puts the project on sys.path

from web.keys import CONFIG, ENGINE

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
    return ms_since(start)


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


async def main(trials: int, window_ms: int) -> None:
    raw, announced, ttfb, starts = [], [], [], []
    async with (
        running_server({"tts": {"engine": "piper", "piper_window_ms": window_ms}}) as server,
        websockets.connect(server.ws_url) as ws,
    ):
        lead_ms = server.app[CONFIG].timeline.lead_ms
        voice = plain_voice()
        await raw_piper_ms(voice, "Warm up the voice.")
        await server.app[ENGINE].synthesize("Warm up the voice.")
        for i in range(trials):
            text = TEXTS[i % len(TEXTS)]
            raw.append(await raw_piper_ms(voice, text.split(". ")[0] + "."))
            first_chunk, first_byte, starts_in = await one_trial(server.base_url, server.token, ws, text)
            announced.append(first_chunk)
            ttfb.append(first_byte)
            starts.append(starts_in)
            await asyncio.sleep(1.0)  # let the channel go idle: each trial is a fresh start
    raw_ms, starts_ms = statistics.median(raw), statistics.median(starts)
    announced_ms, ttfb_ms = statistics.median(announced), statistics.median(ttfb)
    print(f"trials: {trials}, piper_window_ms = {window_ms}")
    print(f"raw piper (PiperVoice.load), first sentence  median {raw_ms:7.1f} ms")
    print(
        f"POST -> first chunk announced   median {announced_ms:7.1f} ms   {announced_ms / raw_ms:.2f}x raw  (target <= 1.50x)"
    )
    print(f"POST -> first stream byte       median {ttfb_ms:7.1f} ms   {ttfb_ms / raw_ms:.2f}x raw")
    print(f"POST -> starts_at_ms (audible)  median {starts_ms:7.1f} ms   (first chunk ready + the {lead_ms} ms lead)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--window-ms", type=int, default=3000, help="[tts] piper_window_ms (0: decode whole)")
    args = parser.parse_args()
    asyncio.run(main(args.trials, args.window_ms))
