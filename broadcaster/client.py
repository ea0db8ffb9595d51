"""A Python client: submit narration, and a headless listener that follows a channel's timeline."""

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import numpy as np
import soundfile
import websockets

from broadcaster.core.playout import convert
from tts.encode import read_flac
from tts.engine import Pcm


async def submit(base_url: str, channel: str, text: str, token: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base_url}/api/channels/{channel}/requests",
            json={"text": text},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            return resp.status, await resp.json()


@dataclass
class HeardChunk:
    chunk_id: str
    request_id: str
    seq: int
    starts_at_ms: int
    text: str
    live: bool = False  # announced while connected, not found in a snapshot
    pcm: Pcm | None = None
    ready_at_ms: int | None = None  # when the audio was in hand, by the server's clock (live chunks only)
    duration_ms: int = 0
    from_ms: int | None = None  # cut by a pause: heard again from this moment (the resume)
    before_pauses: list[tuple[int, int, int]] = field(default_factory=list)  # (at ms, offset ms, length ms) heard

    @property
    def sounds_from_ms(self) -> int:
        return self.starts_at_ms if self.from_ms is None else max(self.starts_at_ms, self.from_ms)

    def resumed(self, paused_at_ms: int, resumes_at_ms: int) -> None:
        """As the server moved it (web/messages.py, channel_resumed): what had not ended by the pause moves
        later; a chunk the pause cut keeps the part heard before it and goes on from the resume."""
        shift = resumes_at_ms - paused_at_ms
        if not shift or self.starts_at_ms + self.duration_ms <= paused_at_ms:
            return
        heard_from = self.sounds_from_ms
        if heard_from < paused_at_ms:
            self.before_pauses.append((heard_from, heard_from - self.starts_at_ms, paused_at_ms - heard_from))
            self.from_ms = resumes_at_ms
        self.starts_at_ms += shift


@dataclass
class Heard:
    chunks: dict[str, HeardChunk] = field(default_factory=dict)
    requests_done: int = 0
    offset_ms: float = 0.0  # server clock minus ours, from time_sync
    joined_at_ms: int | None = None  # the server's clock at the snapshot: nothing before it was heard
    paused_at_ms: int | None = None  # the channel is paused: nothing is heard from this moment

    def timeline(self) -> list[HeardChunk]:
        return sorted(self.chunks.values(), key=lambda c: c.starts_at_ms)

    def to_wav(self, path: Path) -> None:
        """What was heard after joining, each chunk at its place on the timeline, silence between, in one
        format: the highest rate and most channels among the chunks (narration is 22.05 kHz mono, tracks
        44.1 kHz stereo), the others resampled and upmixed to it."""
        clips = [clip for c in self.timeline() if c.pcm is not None for clip in self._heard_parts(c)]
        if not clips:
            raise ValueError("nothing was heard, so there is nothing to write")
        rate = max(pcm.sample_rate for _, pcm in clips)
        channels = max(pcm.channels for _, pcm in clips)
        parts = [(start_ms, convert(pcm.samples, pcm.sample_rate, rate, channels)) for start_ms, pcm in clips]
        origin = parts[0][0]
        end = max((start_ms - origin) * rate // 1000 + len(samples) for start_ms, samples in parts)
        out = np.zeros((end, channels), dtype=np.int16)
        for start_ms, samples in parts:
            at = (start_ms - origin) * rate // 1000
            out[at : at + len(samples)] = samples
        soundfile.write(path, out, rate, subtype="PCM_16")

    def _heard_parts(self, chunk: HeardChunk) -> list[tuple[int, Pcm]]:
        """The parts of a chunk heard after joining, each with when it starts: before any pause that cut
        it, and from its last resume (or its start) to its end."""
        rate, samples = chunk.pcm.sample_rate, chunk.pcm.samples
        pieces = [*chunk.before_pauses, (chunk.sounds_from_ms, chunk.sounds_from_ms - chunk.starts_at_ms, None)]
        joined_ms = self.joined_at_ms if self.joined_at_ms is not None else min(at for at, _, _ in pieces)
        parts = []
        for at_ms, offset_ms, length_ms in pieces:
            late_ms = max(0, joined_ms - at_ms)
            begin = (offset_ms + late_ms) * rate // 1000
            end = len(samples) if length_ms is None else (offset_ms + length_ms) * rate // 1000
            if begin < end:
                parts.append((at_ms + late_ms, Pcm(samples[begin:end], rate)))
        return parts


async def listen(
    base_url: str,
    channel: str,
    out: Path | None = None,
    max_requests: int = 0,
    seconds: float = 0,
    quiet: bool = False,
    key: str | None = None,
) -> Heard:
    """Follow a channel; `key` is the listen key of a private channel."""
    heard = Heard()
    ws_url = (
        "ws"
        + base_url.removeprefix("http")
        + f"/ws/channels/{channel}"
        + (f"?{urlencode({'key': key})}" if key else "")
    )
    headers = {"X-Listen-Key": key} if key else None
    async with aiohttp.ClientSession(headers=headers) as http, websockets.connect(ws_url) as ws:
        follower = _Follower(ws, http, base_url, heard, quiet)
        await ws.send(json.dumps({"type": "time_sync", "t0": _now_ms()}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower.run(max_requests), seconds or None)
        await follower.finish()
    if out is not None:
        heard.to_wav(out)
    return heard


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Follower:
    def __init__(self, ws, http: aiohttp.ClientSession, base_url: str, heard: Heard, quiet: bool):  # noqa: ANN001
        self.ws, self.http, self.base_url, self.heard, self.quiet = ws, http, base_url, heard, quiet
        self.tasks: set[asyncio.Task] = set()
        self.fetches: set[asyncio.Task] = set()
        self.playing: dict[str, asyncio.Task] = {}
        self.resumed = asyncio.Event()  # set (and replaced) at each resume

    async def run(self, max_requests: int) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            self.handle(message)
            if max_requests and self.heard.requests_done >= max_requests:
                return

    def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "snapshot":
            self.heard.joined_at_ms = message["server_time_ms"]
            self.heard.paused_at_ms = message.get("paused_at_ms")
        if kind == "snapshot" and message["now_playing"]:
            for chunk in message["now_playing"]["chunks"]:
                self.note(message["now_playing"]["request_id"], chunk)
        elif kind == "audio_chunk_ready":
            self.note(message["request_id"], message, live=True)
        elif kind == "timeline_shifted" and message["chunk_id"] in self.heard.chunks:
            self.heard.chunks[message["chunk_id"]].starts_at_ms = message["starts_at_ms"]
        elif kind == "channel_paused":
            self.heard.paused_at_ms = message["paused_at_ms"]
            self.say("paused by the host")
        elif kind == "channel_resumed":
            self.heard.paused_at_ms = None
            for entry in self.heard.chunks.values():
                entry.resumed(message["paused_at_ms"], message["resumes_at_ms"])
            self.resumed.set()
            self.resumed = asyncio.Event()
            self.say("resumed")
        elif kind in ("request_failed", "request_cancelled"):
            for chunk_id in message["discarded_chunk_ids"]:
                self.forget(chunk_id)
            self.heard.requests_done += 1
            self.say(f"request {kind.removeprefix('request_')}: {message['request_id']} {message.get('reason', '')}")
        elif kind == "request_played":
            self.heard.requests_done += 1
            self.say(f"request played: {message['request_id']}")
        elif kind == "time_sync":
            t3 = _now_ms()
            self.heard.offset_ms = ((message["t1"] - message["t0"]) + (message["t2"] - t3)) / 2

    def note(self, request_id: str, chunk: dict[str, Any], live: bool = False) -> None:
        if chunk["chunk_id"] in self.heard.chunks:
            return
        entry = HeardChunk(chunk["chunk_id"], request_id, chunk["seq"], chunk["starts_at_ms"], chunk["text"], live)
        entry.duration_ms, entry.from_ms = chunk["duration_ms"], chunk.get("from_ms")
        self.heard.chunks[entry.chunk_id] = entry
        fetch = asyncio.create_task(self.fetch(entry, chunk["url"]))
        self.fetches.add(fetch)
        play = asyncio.create_task(self.play(entry, fetch))
        self.tasks.add(play)
        self.playing[entry.chunk_id] = play

    def forget(self, chunk_id: str) -> None:
        """A chunk dropped from the timeline is not played and not written."""
        self.heard.chunks.pop(chunk_id, None)
        task = self.playing.pop(chunk_id, None)
        if task is not None:
            task.cancel()

    async def fetch(self, entry: HeardChunk, url: str) -> None:
        async with self.http.get(f"{self.base_url}{url}?format=flac") as resp:
            resp.raise_for_status()
            entry.pcm = read_flac(await resp.read())
        if entry.live:
            entry.ready_at_ms = round(_now_ms() + self.heard.offset_ms)

    async def play(self, entry: HeardChunk, fetch: asyncio.Task) -> None:
        await fetch
        await self._until_heard(lambda: entry.sounds_from_ms)
        self.say(f"\u25b6 {entry.text}")
        await self._until_heard(lambda: entry.starts_at_ms + entry.duration_ms)
        ack: dict[str, Any] = {"type": "audio_played", "chunk_id": entry.chunk_id}
        if entry.ready_at_ms is not None:
            ack["ready_at_ms"] = entry.ready_at_ms  # lets the server give a slow audience more lead
        await self.ws.send(json.dumps(ack))

    async def _until_heard(self, moment) -> None:  # noqa: ANN001
        """Until the timeline reaches `moment()`, which a pause stops short of and a resume moves on."""
        while True:
            target, paused_at, resumed = moment(), self.heard.paused_at_ms, self.resumed
            if paused_at is not None and target > paused_at:
                await resumed.wait()
            elif _now_ms() + self.heard.offset_ms >= target:
                return
            else:
                await self._sleep_until(target)

    async def _sleep_until(self, server_ms: int) -> None:
        local_ms = server_ms - self.heard.offset_ms
        await asyncio.sleep(max(0.0, (local_ms - _now_ms()) / 1000))

    async def finish(self) -> None:
        """Let fetches in flight land (bounded); playback still in the future is not waited for."""
        if self.fetches:
            await asyncio.wait(self.fetches, timeout=10)
        for task in (*self.tasks, *self.fetches):
            task.cancel()
        await asyncio.gather(*self.tasks, *self.fetches, return_exceptions=True)

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)
