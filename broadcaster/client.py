"""A Python client: submit narration, and a headless listener that follows a channel's timeline."""

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import numpy as np
import soundfile
import websockets

from broadcaster.core.bed import TALK_OVER_DUCK_DB, Bed, BedTrack, Segment, bed_from, duck_envelope
from broadcaster.core.playout import Placed, bed_gains, convert, ducked, render, sample_index
from tts.encode import read_flac
from tts.engine import Pcm

MAX_BED_SEGMENTS = 400  # bed segments a listener fetches for its recording (over half an hour of music)


async def submit(
    base_url: str, channel: str, text: str, token: str, voice: str | None = None
) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base_url.rstrip('/')}/api/channels/{channel}/requests",
            json={"text": text, **({"voice": voice} if voice else {})},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            return resp.status, await _answer(resp)


class ProducerError(Exception):
    """The server refused a producer's request; `status` and `body` are its answer."""

    def __init__(self, status: int, body: dict[str, Any]):
        message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else None
        super().__init__(f"HTTP {status}: {message or body}")
        self.status = status
        self.body = body


class OpenNarration:
    """Narration spoken while it is being written, for text that arrives a few words at a time (a
    language model's reply): each complete sentence goes on the air as soon as it is complete.

        async with OpenNarration(base_url, "table", token) as story:
            async for words in model_reply():
                await story.write(words)

    `write` only buffers; one append is in flight at a time, and appends are at least `interval_s`
    apart (under the server's append rate), so a fast stream is sent in larger pieces. Leaving the
    block closes the narration: what is left unfinished is spoken as it is.
    """

    def __init__(
        self,
        base_url: str,
        channel: str,
        token: str,
        over: bool = False,
        voice: str | None = None,
        interval_s: float = 0.15,
    ):
        self.url = f"{base_url.rstrip('/')}/api/channels/{channel}/requests"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.over = over
        self.voice = voice  # one of the server's [tts.voices], else its default voice
        self.interval_s = interval_s
        self.request_id: str | None = None
        self.answer: dict[str, Any] = {}  # the server's latest answer (status, sentences, open)
        self._http: aiohttp.ClientSession | None = None
        self._buffer: list[str] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._sender: asyncio.Task | None = None

    async def __aenter__(self) -> "OpenNarration":
        self._http = aiohttp.ClientSession()
        try:
            opening = {"text": "", "open": True, "over": self.over, **({"voice": self.voice} if self.voice else {})}
            self.answer = await self._post(self.url, opening)
        except BaseException:
            await self._http.close()
            raise
        self.request_id = self.answer["request_id"]
        self._sender = asyncio.create_task(self._send_loop())
        return self

    async def write(self, text: str) -> None:
        """Queue more text (raises what the server refused of earlier text)."""
        if self._sender is not None and self._sender.done():
            self._sender.result()  # re-raises the server's refusal
        self._buffer.append(text)
        self._wake.set()

    async def close(self) -> dict[str, Any]:
        """Send what is buffered with the close; returns the server's last answer."""
        self._closing = True
        self._wake.set()
        try:
            if self._sender is not None:
                await self._sender
        finally:
            if self._http is not None:
                await self._http.close()
        return self.answer

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            final = self._closing
            text, self._buffer = "".join(self._buffer), []
            if text or final:
                self.answer = await self._post(f"{self.url}/{self.request_id}/text", {"text": text, "final": final})
            if final:
                return
            await asyncio.sleep(self.interval_s)  # what arrives meanwhile goes in the next append

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        while True:
            async with self._http.post(url, json=body, headers=self.headers) as resp:
                answer = await _answer(resp)
                if resp.status == 429:  # over the append rate: wait as told, and send it then
                    await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                    continue
                if resp.status != 202:
                    raise ProducerError(resp.status, answer)
                return answer


async def _answer(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The server's JSON answer; a proxy's page in between becomes an error like the server's own."""
    try:
        answer = await resp.json(content_type=None)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        return answer
    text = (await resp.text(errors="replace"))[:200]
    return {"error": {"code": "not_json", "message": f"expected a JSON answer, got {text!r}"}}


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
    until_ms: int | None = None  # cut by a skip: nothing of it is heard from this moment

    @property
    def ends_at_ms(self) -> int:
        end = self.starts_at_ms + self.duration_ms
        return end if self.until_ms is None else min(end, self.until_ms)

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


@dataclass(frozen=True)
class HeardBed:
    """A bed as the server last described it from `from_ms` (when that word came) until `until_ms`."""

    bed: Bed
    from_ms: int
    until_ms: int | None = None


@dataclass
class Heard:
    chunks: dict[str, HeardChunk] = field(default_factory=dict)
    requests_done: int = 0
    offset_ms: float = 0.0  # server clock minus ours, from time_sync
    joined_at_ms: int | None = None  # the server's clock at the snapshot: nothing before it was heard
    paused_at_ms: int | None = None  # the channel is paused: nothing is heard from this moment
    left_at_ms: int | None = None  # the server's clock when listening stopped
    kinds: dict[str, str] = field(default_factory=dict)  # request id -> "speech", "track" or "over"
    speech_before: list[tuple[int, int]] = field(default_factory=list)  # narration the snapshot named
    beds: list[HeardBed] = field(default_factory=list)
    bed_audio: dict[str, Pcm] = field(default_factory=dict)  # bed segments by chunk id
    pauses: list[tuple[int, int]] = field(default_factory=list)  # (paused at, resumed at) of pauses that moved

    def timeline(self) -> list[HeardChunk]:
        return sorted(self.chunks.values(), key=lambda c: c.starts_at_ms)

    def to_wav(self, path: Path) -> None:
        """The mix that was heard after joining: each chunk at its place on the timeline (talk-over over
        the track, which dips under it), and the beds under them with their gains, as live.mp3 mixes
        them; in one format: the highest rate and most channels among them (narration is 22.05 kHz mono,
        music 44.1 kHz stereo), the others resampled and upmixed to it."""
        clips = [(c, clip) for c in self.timeline() if c.pcm is not None for clip in self._heard_parts(c)]
        if not clips and not self.bed_audio:
            raise ValueError("nothing was heard, so there is nothing to write")
        formats = [pcm for _, (_, pcm) in clips] + list(self.bed_audio.values())
        rate, channels = max(p.sample_rate for p in formats), max(p.channels for p in formats)
        joined = self.joined_at_ms if self.joined_at_ms is not None else -(2**62)
        beds = [max(joined, b.from_ms, b.bed.sounds_from_ms) for b in self.beds if b.bed.tracks]
        start = min([at for _, (at, _) in clips] + beds)  # from the first sound heard to the last
        end = max([at + pcm.duration_ms for _, (at, pcm) in clips] + ([self.left_at_ms or start] if beds else []))
        out = np.zeros((sample_index(end, rate) - sample_index(start, rate), channels), dtype=np.float32)
        talk = duck_envelope(self._spans("over"), TALK_OVER_DUCK_DB)
        placed = []
        for chunk, (at, pcm) in clips:
            samples = convert(pcm.samples, pcm.sample_rate, rate, channels)
            if self.kinds.get(chunk.request_id) == "track":
                samples = ducked(samples, talk, sample_index(at, rate) * 1000 / rate, rate)
            placed.append(Placed(at, samples))
        out += render(placed, start, end, rate, channels)
        for samples, gains in self._bed_layers(start, end, rate, channels):
            out += samples.astype(np.float32) * gains[:, None]
        soundfile.write(path, np.clip(np.round(out), -32768, 32767).astype(np.int16), rate, subtype="PCM_16")

    def _spans(self, *kinds: str) -> list[tuple[int, int]]:
        """When narration of these kinds sounded: every heard part of its chunks."""
        spans = []
        for chunk in self.chunks.values():
            if self.kinds.get(chunk.request_id, "speech") in kinds:
                spans += [(at, min(at + length, chunk.ends_at_ms)) for at, _, length in chunk.before_pauses]
                spans.append((chunk.sounds_from_ms, chunk.ends_at_ms))
        spans = [(start, end) for start, end in spans if start < end]
        return spans

    def _bed_layers(self, start: int, end: int, rate: int, channels: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each bed over the part of [start, end) its description held for, with its gain at every sample
        (silent through pauses)."""
        speech = self.speech_before + self._spans("speech", "over")
        first = sample_index(start, rate)
        times = start + (np.arange(sample_index(end, rate) - first)) * 1000 / rate
        layers = []
        for heard in self.beds:
            bed, until = heard.bed, end if heard.until_ms is None else min(end, heard.until_ms)
            placed = [
                Placed(s.starts_at_ms, _converted(self.bed_audio[s.chunk_id], rate, channels))
                for s in bed.sounding(max(start, heard.from_ms), until)
                if s.chunk_id in self.bed_audio
            ]
            gains = bed_gains(bed, duck_envelope(speech, bed.duck_db), first * 1000 / rate, len(times), rate)
            held = (times >= max(start, heard.from_ms, bed.sounds_from_ms)) & (times < until)
            for paused_at, resumed_at in self.pauses:
                held &= (times < paused_at) | (times >= resumed_at)
            layers.append((render(placed, start, end, rate, channels), gains * held))
        return layers

    def _heard_parts(self, chunk: HeardChunk) -> list[tuple[int, Pcm]]:
        """The parts of a chunk heard after joining, each with when it starts: before any pause that cut
        it, and from its last resume (or its start) to its end."""
        rate, samples = chunk.pcm.sample_rate, chunk.pcm.samples
        pieces = [*chunk.before_pauses, (chunk.sounds_from_ms, chunk.sounds_from_ms - chunk.starts_at_ms, None)]
        joined_ms = self.joined_at_ms if self.joined_at_ms is not None else min(at for at, _, _ in pieces)
        parts = []
        for at_ms, offset_ms, length_ms in pieces:
            late_ms = max(0, joined_ms - at_ms)
            if chunk.until_ms is not None:  # a skip cut it: up to that moment only
                length_ms = min(length_ms if length_ms is not None else chunk.duration_ms, chunk.until_ms - at_ms)
            begin = (offset_ms + late_ms) * rate // 1000
            end = len(samples) if length_ms is None else (offset_ms + length_ms) * rate // 1000
            if begin < end:
                parts.append((at_ms + late_ms, Pcm(samples[begin:end], rate)))
        return parts


def _converted(pcm: Pcm, rate: int, channels: int) -> np.ndarray:
    return convert(pcm.samples, pcm.sample_rate, rate, channels)


def bed_of(item: dict[str, Any]) -> Bed:
    """A bed from its wire form (docs/protocol.md, the bed object)."""
    tracks = tuple(
        BedTrack(t["track_id"], t["title"], tuple(Segment(s["chunk_id"], s["duration_ms"]) for s in t["segments"]))
        for t in item["tracks"]
    )
    return bed_from(item, tracks)


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
    base_url = base_url.rstrip("/")
    ws_url = (
        "ws"
        + base_url.removeprefix("http")
        + f"/ws/channels/{channel}?"
        + urlencode({"batch": 1, **({"key": key} if key else {})})
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
        self.announced: set[str] = set()  # tracks whose title was printed
        self.resumed = asyncio.Event()  # set (and replaced) at each resume
        self.bed_fetches: set[str] = set()

    async def run(self, max_requests: int) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            for each in message["messages"] if message["type"] == "batch" else (message,):
                self.handle(each)
            if max_requests and self.heard.requests_done >= max_requests:
                return

    def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "snapshot":
            self.snapshot(message)
        elif kind == "audio_stream_started":
            self.heard.kinds[message["request_id"]] = "over" if message.get("over") else message.get("kind", "speech")
        elif kind == "bed_changed":
            self.beds(message, self.server_now())
        elif kind == "audio_chunk_ready":
            self.note(message["request_id"], message, live=True)
        elif kind == "timeline_shifted" and message["chunk_id"] in self.heard.chunks:
            self.heard.chunks[message["chunk_id"]].starts_at_ms = message["starts_at_ms"]
        elif kind == "channel_paused":
            self.heard.paused_at_ms = message["paused_at_ms"]
            self.say("paused by the host")
        elif kind == "channel_resumed":
            self.heard.paused_at_ms = None
            if message["shift_ms"]:
                self.heard.pauses.append((message["paused_at_ms"], message["resumes_at_ms"]))
            for entry in self.heard.chunks.values():
                entry.resumed(message["paused_at_ms"], message["resumes_at_ms"])
            self.resumed.set()
            self.resumed = asyncio.Event()
            self.say("resumed")
        elif kind in ("request_failed", "request_cancelled"):
            for chunk_id in message["discarded_chunk_ids"]:
                self.forget(chunk_id, message.get("stopped_at_ms"))
            self.heard.requests_done += 1
            self.say(f"request {kind.removeprefix('request_')}: {message['request_id']} {message.get('reason', '')}")
        elif kind == "request_played":
            self.heard.requests_done += 1
            self.say(f"request played: {message['request_id']}")
        elif kind == "time_sync":
            t3 = _now_ms()
            self.heard.offset_ms = ((message["t1"] - message["t0"]) + (message["t2"] - t3)) / 2

    def snapshot(self, message: dict[str, Any]) -> None:
        heard = self.heard
        heard.joined_at_ms = message["server_time_ms"]
        heard.paused_at_ms = message.get("paused_at_ms")
        heard.speech_before = [tuple(span) for span in message.get("speech_ms", ())]
        playing = [p for p in [message.get("now_playing")] if p] + message.get("over", [])
        for item in playing:
            heard.kinds[item["request_id"]] = "over" if item.get("over") else item.get("kind", "speech")
            for chunk in item["chunks"]:
                self.note(item["request_id"], chunk)
        self.beds(message, heard.joined_at_ms)

    def beds(self, message: dict[str, Any], now_ms: int) -> None:
        """The beds as a snapshot or bed_changed describes them from now on; their segments are fetched."""
        heard = self.heard
        heard.beds = [replace(b, until_ms=now_ms) if b.until_ms is None else b for b in heard.beds]
        for item in [b for b in [message.get("bed")] if b] + message.get("fading_beds", []):
            bed = bed_of(item)
            heard.beds.append(HeardBed(bed, now_ms))
            for track in item["tracks"]:
                for segment in track["segments"]:
                    if segment["chunk_id"] not in self.bed_fetches and len(self.bed_fetches) < MAX_BED_SEGMENTS:
                        self.bed_fetches.add(segment["chunk_id"])
                        self.fetches.add(asyncio.create_task(self.fetch_bed(segment)))

    async def fetch_bed(self, segment: dict[str, Any]) -> None:
        async with self.http.get(f"{self.base_url}{segment['url']}?format=flac") as resp:
            resp.raise_for_status()
            self.heard.bed_audio[segment["chunk_id"]] = read_flac(await resp.read())

    def server_now(self) -> int:
        return round(_now_ms() + self.heard.offset_ms)

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

    def forget(self, chunk_id: str, stopped_at_ms: int | None = None) -> None:
        """A chunk dropped from the timeline is not played and not written; one a skip cut while it
        sounded is written up to that moment, as every listener heard it."""
        entry = self.heard.chunks.get(chunk_id)
        if entry is not None and stopped_at_ms is not None and entry.sounds_from_ms < stopped_at_ms:
            entry.until_ms = stopped_at_ms
        else:
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
        if self.heard.kinds.get(entry.request_id) != "track" or entry.request_id not in self.announced:
            self.announced.add(entry.request_id)  # a track is named once, not at each 5 s segment
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
        self.heard.left_at_ms = self.server_now()
        if self.fetches:
            await asyncio.wait(self.fetches, timeout=10)
        for task in (*self.tasks, *self.fetches):
            task.cancel()
        await asyncio.gather(*self.tasks, *self.fetches, return_exceptions=True)

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)
