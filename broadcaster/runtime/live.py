"""The endless MP3 of a channel: one encoder per channel, however many listeners.

A render loop turns the channel's timeline into PCM a little ahead of the
clock (silence between items, so players never see the stream end) and feeds
one ffmpeg encoder. A read loop gathers the MP3 bytes into blocks of about
BLOCK_MS, frames each block once with and once without ICY metadata
(broadcaster/core/icy.py), and writes those same bytes to every player's
transport: no per-player task, and one system call per player and block.

A write never waits. What a socket does not take, its transport copies and
keeps; once that holds more than TRANSPORT_BYTES, the player's next blocks wait
in its backlog instead, uncopied (the blocks every player shares), and go to
the transport as it drains. A player more than BEHIND_S of audio behind is
dropped, so it cannot hold the others up, and a thousand stalled players cost
a thousand transport buffers, not a thousand copies of the last minute.

The last few seconds are kept so a new listener gets a burst and starts
playing at once; a new stream renders from that far back, so the player that
starts it gets one too.
"""

import asyncio
import contextlib
import logging
import socket
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

from broadcaster import logs
from broadcaster.config import LiveConfig
from broadcaster.core.bed import TALK_OVER_DUCK_DB, Bed, duck_envelope
from broadcaster.core.icy import IcyFraming
from broadcaster.core.model import Chunk, Request
from broadcaster.core.playout import Placed, bed_gains, convert, ducked, mix, render, sample_index
from broadcaster.core.states import ChunkState
from broadcaster.core.titles import item_title, stream_title
from db.audio_store import AudioStore, AudioUnavailable
from tts.encode import Mp3Encoder, decode_flac

from .clock import Clock
from .telemetry import Telemetry

log = logging.getLogger(__name__)

FRAME_MS = 100  # rendered at a time
AHEAD_MS = 400  # how far ahead of the clock audio is rendered
BLOCK_MS = 1000  # audio written to every player at a time: each write is a system call per player
BEHIND_S = 60  # audio waiting for a player before it is dropped as too slow
TRANSPORT_BYTES = 65536  # what a player's transport may hold (its own copy) before blocks wait in its backlog
IDLE_STOP_S = 10  # the encoder stops this long after its last listener left
CACHE_CHUNKS = 16


class Lineup(Protocol):
    """What a live stream reads of a channel's requests: the core's Channel has it."""

    @property
    def line(self) -> Sequence[Request]: ...

    @property
    def recent(self) -> Iterable[Request]: ...

    @property
    def paused_at_ms(self) -> int | None: ...

    @property
    def bed(self) -> Bed | None: ...

    @property
    def fading_beds(self) -> tuple[Bed, ...]: ...

    @property
    def overlay(self) -> Sequence[Request]: ...

    def speech(self, now_ms: int) -> list[tuple[int, int]]: ...

    def talk_over(self, now_ms: int) -> list[tuple[int, int]]: ...


class Playable(Protocol):
    """A channel a live stream plays: its ChannelRunner, or in a cluster a replica of it (web/replica.py)."""

    @property
    def name(self) -> str: ...

    @property
    def channel(self) -> Lineup: ...


class LiveListener:
    """One player: the transport its audio is written to, whether it takes ICY metadata, the blocks
    waiting for it while its transport is full, and `ended`, done once its stream is over (dropped,
    its key revoked, or the stream stopped)."""

    __slots__ = ("backlog", "backlog_bytes", "ended", "icy", "transport")

    def __init__(self, transport: asyncio.Transport, icy: bool):
        self.transport, self.icy = transport, icy
        self.backlog: deque[bytes] = deque()
        self.backlog_bytes = 0
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def hold(self, block: bytes) -> None:
        """Queue `block` behind the others waiting, then hand the transport as many as it has room for."""
        self.backlog.append(block)
        self.backlog_bytes += len(block)
        while self.backlog and self.transport.get_write_buffer_size() <= TRANSPORT_BYTES:
            block = self.backlog.popleft()
            self.backlog_bytes -= len(block)
            self.transport.write(block)

    def finish(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


class LiveStream:
    def __init__(
        self,
        runner: Playable,
        audio: AudioStore,
        config: LiveConfig,
        clock: Clock,
        metrics: Telemetry | None = None,
    ):
        self.runner, self.audio, self.clock = runner, audio, clock
        self.metrics = metrics or Telemetry()
        self.rate, self.channels, self.bitrate_kbps = config.sample_rate, config.channels, config.bitrate_kbps
        self.listeners: set[LiveListener] = set()
        self.title = self.idle_title
        self.framing = IcyFraming()
        self.block_bytes = self.bitrate_kbps * BLOCK_MS // 8  # kbit/s times ms, in bytes
        self.behind_bytes = self.bitrate_kbps * 125 * BEHIND_S
        self.bytes_sent = 0
        self.dropped = 0
        self.over = False  # the encoder's output ended or the stream was stopped
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._tasks: list[asyncio.Task] = []
        self._encoder: Mp3Encoder | None = None
        self._idle_since: float | None = None

    @property
    def idle_title(self) -> str:
        return f"{self.runner.name} - Broadcaster"

    @property
    def paused_title(self) -> str:
        return f"{self.runner.name} - paused"

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    async def start(self) -> None:
        self._encoder = await Mp3Encoder.start(self.rate, self.bitrate_kbps, "pipe:1", self.channels)
        self._tasks = [
            asyncio.create_task(
                self._render_loop(),
                name=f"live-render:{self.runner.name}",
                context=logs.task_context(channel=self.runner.name),
            ),
            asyncio.create_task(
                self._read_loop(),
                name=f"live-read:{self.runner.name}",
                context=logs.task_context(channel=self.runner.name),
            ),
        ]
        # Idle until its first player subscribes: one that left during its own request never does,
        # and the stream must still stop.
        self._idle_since = asyncio.get_running_loop().time()
        log.info("live stream of %s started", self.runner.name)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._encoder:
            with contextlib.suppress(Exception):
                await self._encoder.abandon()
        self._end_all()
        log.info("live stream of %s stopped", self.runner.name)

    def subscribe(self, transport: asyncio.Transport, icy: bool) -> LiveListener:
        """A new player on `transport` (its response headers already sent): it gets the burst now and
        every block from here on, in the same call, so nothing can come between."""
        sock = transport.get_extra_info("socket")
        if sock is not None:  # the kernel's share small too, or on loopback it grows to megabytes unseen
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, TRANSPORT_BYTES)
        listener = LiveListener(transport, icy)
        if self.over:  # its encoder is gone: the player ends at once and reconnects to a fresh stream
            listener.finish()
            return listener
        burst = self.framing.burst(icy)
        if burst:
            transport.write(burst)
            self.bytes_sent += len(burst)
            self.metrics.sent("live", len(burst))
        self.listeners.add(listener)
        self._idle_since = None
        return listener

    def unsubscribe(self, listener: LiveListener) -> None:
        self.end(listener)
        if not self.listeners:
            self._idle_since = asyncio.get_running_loop().time()

    def end(self, listener: LiveListener) -> None:
        """No more audio for this player; its handler sees `ended` and closes the response."""
        self.listeners.discard(listener)
        listener.finish()

    def _end_all(self) -> None:
        self.over = True
        for listener in list(self.listeners):
            self.end(listener)

    def idle_for(self) -> float:
        if self._idle_since is None:
            return 0.0
        return asyncio.get_running_loop().time() - self._idle_since

    # -- rendering -------------------------------------------------------------------------

    async def _render_loop(self) -> None:
        try:
            await self._render()
        except Exception:  # our bug: said, and the players let go (they reconnect to a fresh stream)
            log.exception("live stream of %s stopped rendering", self.runner.name)
            self._end_all()
            raise

    async def _render(self) -> None:
        # From a burst's worth of audio back: the player that starts the stream gets its burst at once
        # too, as every later one does, instead of audio trickling in at the pace it plays (it underran).
        cursor = self.clock() - self.framing.burst_bytes * 8 // self.bitrate_kbps
        stdin = self._encoder.proc.stdin
        while True:
            while cursor < self.clock() + AHEAD_MS:
                placed, title = await self._placed(cursor, cursor + FRAME_MS)
                self.title = title
                frame = render(placed, cursor, cursor + FRAME_MS, self.rate, self.channels)
                frame = mix(frame, await self._bed_layers(cursor, cursor + FRAME_MS))
                stdin.write(frame.astype("<i2").tobytes())
                await stdin.drain()
                cursor += FRAME_MS
            await asyncio.sleep(FRAME_MS / 2000)

    async def _placed(self, start_ms: int, end_ms: int) -> tuple[list[Placed], str]:
        """What sounds in the frame, and the stream's title for it (it keeps self.title through gaps)."""
        placed, sounding = [], []
        channel = self.runner.channel
        if channel.paused_at_ms is not None:
            end_ms = max(start_ms, min(end_ms, channel.paused_at_ms))  # silence from the pause on
        duck = duck_envelope(channel.talk_over(start_ms), TALK_OVER_DUCK_DB)
        for request in (*channel.recent, *channel.line, *channel.overlay):
            for chunk in request.chunks:
                if _sounds_within(chunk, start_ms, end_ms):
                    item = await self._placed_chunk(chunk, end_ms)
                    if request.kind == "track" and duck:  # under talk-over
                        first_ms = sample_index(item.starts_at_ms, self.rate) * 1000 / self.rate
                        item = Placed(item.starts_at_ms, ducked(item.samples, duck, first_ms, self.rate))
                    placed.append(item)
                    sounding.append(item_title(request))
        title = self.paused_title if channel.paused_at_ms is not None and channel.paused_at_ms <= start_ms else None
        return placed, title or stream_title(self.title, sounding, bool(channel.line), self.idle_title)

    async def _bed_layers(self, start_ms: int, end_ms: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each bed's audio in the frame with the gain it has at every sample (core/bed.py): the mix
        every listener page makes."""
        channel = self.runner.channel
        beds = [b for b in (channel.bed, *channel.fading_beds) if b is not None]
        if not beds:
            return []
        stop = end_ms if channel.paused_at_ms is None else max(start_ms, min(end_ms, channel.paused_at_ms))
        speech = channel.speech(start_ms)
        first = sample_index(start_ms, self.rate)
        count = sample_index(end_ms, self.rate) - first
        layers = []
        for bed in beds:
            placed = [
                await self._placed_audio(s.track_id, s.chunk_id, s.starts_at_ms, bed.sounds_from_ms, stop)
                for s in bed.sounding(start_ms, stop)
            ]
            samples = render(placed, start_ms, end_ms, self.rate, self.channels)
            gains = bed_gains(bed, duck_envelope(speech, bed.duck_db), first * 1000 / self.rate, count, self.rate)
            layers.append((samples, gains))
        return layers

    async def _placed_chunk(self, chunk: Chunk, end_ms: int) -> Placed:
        """A chunk's audio from where it is heard (after a pause, from the resume) up to `end_ms`."""
        return await self._placed_audio(
            chunk.request_id, chunk.chunk_id, chunk.starts_at_ms, chunk.sounds_from_ms, end_ms
        )

    async def _placed_audio(
        self, request_id: str, chunk_id: str, starts_at_ms: int, from_ms: int, end_ms: int
    ) -> Placed:
        """Stored audio placed at starts_at_ms, heard from from_ms (after a pause) up to end_ms."""
        samples = await self._samples(request_id, chunk_id)
        begin = max(starts_at_ms, from_ms)
        skip = sample_index(begin, self.rate) - sample_index(starts_at_ms, self.rate)
        keep = max(0, sample_index(end_ms, self.rate) - sample_index(begin, self.rate))
        return Placed(begin, samples[skip : skip + keep])

    async def _samples(self, request_id: str, chunk_id: str) -> np.ndarray:
        if chunk_id not in self._cache:
            try:
                pcm = await decode_flac(await self.audio.read(request_id, chunk_id, "flac"))
                samples = await asyncio.to_thread(convert, pcm.samples, pcm.sample_rate, self.rate, self.channels)
            except (FileNotFoundError, AudioUnavailable):  # purged meanwhile, or its database away:
                samples = np.zeros((0, self.channels), dtype=np.int16)  # silence, not a broken stream
            except (RuntimeError, ValueError) as exc:  # stored bytes that do not decode (a damaged file)
                log.warning("live stream of %s: chunk %s does not decode, silence instead: %s",
                            self.runner.name, chunk_id, exc)  # fmt: skip
                samples = np.zeros((0, self.channels), dtype=np.int16)
            self._cache[chunk_id] = samples
            if len(self._cache) > CACHE_CHUNKS:
                self._cache.popitem(last=False)
        return self._cache[chunk_id]

    # -- fan-out ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        stdout, block = self._encoder.proc.stdout, bytearray()
        try:
            while data := await stdout.read(65536):
                block += data
                if len(block) >= self.block_bytes:
                    self.broadcast(bytes(block))
                    block.clear()
        finally:  # the encoder is gone: its players reconnect to a fresh stream
            self._end_all()

    def broadcast(self, audio: bytes) -> None:
        """The block to every player, framed once each way; a write never waits (see the module's doc)."""
        plain, framed = self.framing.add(audio, self.title)
        gone, slow = [], []
        for listener in self.listeners:
            transport = listener.transport
            if transport.is_closing():
                gone.append(listener)
            elif listener.backlog or transport.get_write_buffer_size() > TRANSPORT_BYTES:
                listener.hold(framed if listener.icy else plain)
                if listener.backlog_bytes > self.behind_bytes:
                    slow.append(listener)
            else:
                transport.write(framed if listener.icy else plain)
        sent = len(audio) * (len(self.listeners) - len(gone))
        self.bytes_sent += sent
        self.metrics.sent("live", sent)  # handed to the players; a slow one's wait in its backlog first
        for listener in gone:
            self.end(listener)
        for listener in slow:
            self._drop(listener)

    def _drop(self, listener: LiveListener) -> None:
        listener.transport.abort()  # what its transport held goes too
        listener.backlog.clear()
        self.end(listener)
        self.dropped += 1
        self.metrics.dropped_consumer("live")
        log.warning("live listener on %s dropped: fell too far behind", self.runner.name)


def _sounds_within(chunk: Chunk, start_ms: int, end_ms: int) -> bool:
    if chunk.starts_at_ms is None or chunk.state == ChunkState.DISCARDED:
        return False
    return chunk.sounds_from_ms < end_ms and chunk.starts_at_ms + chunk.duration_ms > start_ms


class LiveStreams:
    """The live streams of all channels, started on first listener and stopped when idle."""

    def __init__(self, audio: AudioStore, config: LiveConfig, clock: Clock, metrics: Telemetry | None = None):
        self.audio, self.config, self.clock = audio, config, clock
        self.metrics = metrics or Telemetry()
        self.streams: dict[str, LiveStream] = {}
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task | None = None

    async def stream(self, runner: Playable) -> LiveStream:
        async with self._lock:
            live = self.streams.get(runner.name)
            if live is not None and not live.running:  # its encoder died, or a bug stopped it
                await live.stop()  # its encoder and players go with it
            if live is None or not live.running:
                live = LiveStream(runner, self.audio, self.config, self.clock, self.metrics)
                await live.start()
                self.streams[runner.name] = live
            if self._reaper is None:
                self._reaper = asyncio.create_task(self._reap(), context=logs.task_context())
            return live

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(IDLE_STOP_S / 2)
            async with self._lock:
                for name, live in list(self.streams.items()):
                    if not live.listeners and live.idle_for() >= IDLE_STOP_S:
                        await live.stop()
                        del self.streams[name]

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        await asyncio.gather(*(live.stop() for live in self.streams.values()))
        self.streams.clear()
