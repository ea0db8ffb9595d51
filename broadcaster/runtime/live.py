"""The endless MP3 of a channel: one encoder per channel, however many listeners.

A render loop turns the channel's timeline into PCM a little ahead of the
clock (silence between items, so players never see the stream end) and feeds
one ffmpeg encoder. A read loop takes the MP3 bytes and offers them to every
listener's bounded queue; a listener that falls too far behind is dropped, so
it cannot hold the others up. The last few seconds are kept so a new listener
gets a burst and starts playing at once.
"""

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque

import numpy as np

from broadcaster import logs
from broadcaster.config import LiveConfig
from broadcaster.core.model import Chunk
from broadcaster.core.playout import Placed, convert, render
from broadcaster.core.states import ChunkState
from broadcaster.core.titles import item_title, stream_title
from db.audio_store import AudioStore
from tts.encode import Mp3Encoder, decode_flac

from .clock import Clock
from .runner import ChannelRunner
from .telemetry import Telemetry

log = logging.getLogger(__name__)

FRAME_MS = 100  # rendered at a time
AHEAD_MS = 400  # how far ahead of the clock audio is rendered
BURST_BYTES = 24_000  # about three seconds at 64 kbit/s
LISTENER_QUEUE = 256  # reads of up to 4 KiB: about two minutes of audio before a stalled listener is dropped
IDLE_STOP_S = 10  # the encoder stops this long after its last listener left
CACHE_CHUNKS = 16


class LiveListener:
    def __init__(self, burst: bytes):
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(LISTENER_QUEUE)
        if burst:
            self.queue.put_nowait(burst)

    def offer(self, data: bytes | None) -> bool:
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            return False
        return True

    def end(self) -> None:
        """End this player's stream now, dropping what waits for it (its listen key was revoked)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class LiveStream:
    def __init__(
        self,
        runner: ChannelRunner,
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
        self.bytes_sent = 0
        self.dropped = 0
        self._burst: deque[bytes] = deque()
        self._burst_size = 0
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._tasks: list[asyncio.Task] = []
        self._encoder: Mp3Encoder | None = None
        self._idle_since: float | None = None

    @property
    def idle_title(self) -> str:
        return f"{self.runner.name} - Broadcaster"

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
        log.info("live stream of %s started", self.runner.name)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._encoder:
            with contextlib.suppress(Exception):
                await self._encoder.abandon()
        for listener in list(self.listeners):
            listener.offer(None)
        log.info("live stream of %s stopped", self.runner.name)

    def subscribe(self) -> LiveListener:
        listener = LiveListener(b"".join(self._burst))
        self.listeners.add(listener)
        self._idle_since = None
        return listener

    def unsubscribe(self, listener: LiveListener) -> None:
        self.listeners.discard(listener)
        if not self.listeners:
            self._idle_since = asyncio.get_running_loop().time()

    def idle_for(self) -> float:
        if self._idle_since is None:
            return 0.0
        return asyncio.get_running_loop().time() - self._idle_since

    # -- rendering -------------------------------------------------------------------------

    async def _render_loop(self) -> None:
        cursor = self.clock()
        stdin = self._encoder.proc.stdin
        while True:
            while cursor < self.clock() + AHEAD_MS:
                placed, title = await self._placed(cursor, cursor + FRAME_MS)
                self.title = title
                frame = render(placed, cursor, cursor + FRAME_MS, self.rate, self.channels)
                stdin.write(frame.astype("<i2").tobytes())
                await stdin.drain()
                cursor += FRAME_MS
            await asyncio.sleep(FRAME_MS / 2000)

    async def _placed(self, start_ms: int, end_ms: int) -> tuple[list[Placed], str]:
        """What sounds in the frame, and the stream's title for it (it keeps self.title through gaps)."""
        placed, sounding = [], []
        channel = self.runner.channel
        for request in (*channel.recent, *channel.line):
            for chunk in request.chunks:
                if _sounds_within(chunk, start_ms, end_ms):
                    placed.append(Placed(chunk.starts_at_ms, await self._samples(chunk)))
                    sounding.append(item_title(request))
        return placed, stream_title(self.title, sounding, bool(channel.line), self.idle_title)

    async def _samples(self, chunk: Chunk) -> np.ndarray:
        if chunk.chunk_id not in self._cache:
            try:
                pcm = await decode_flac(await self.audio.read(chunk.request_id, chunk.chunk_id, "flac"))
                samples = await asyncio.to_thread(convert, pcm.samples, pcm.sample_rate, self.rate, self.channels)
            except FileNotFoundError:
                samples = np.zeros((0, self.channels), dtype=np.int16)  # purged meanwhile: silence, not a broken stream
            self._cache[chunk.chunk_id] = samples
            if len(self._cache) > CACHE_CHUNKS:
                self._cache.popitem(last=False)
        return self._cache[chunk.chunk_id]

    # -- fan-out ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        stdout = self._encoder.proc.stdout
        while data := await stdout.read(4096):
            self._remember(data)
            for listener in list(self.listeners):
                if listener.offer(data):
                    self.bytes_sent += len(data)
                    self.metrics.sent("live", len(data))  # queued for the player, written moments later
                else:
                    self.listeners.discard(listener)
                    self.dropped += 1
                    self.metrics.dropped_consumer("live")
                    listener.queue = _closed_queue()
                    log.warning("live listener on %s dropped: fell too far behind", self.runner.name)

    def _remember(self, data: bytes) -> None:
        self._burst.append(data)
        self._burst_size += len(data)
        while self._burst_size - len(self._burst[0]) >= BURST_BYTES:
            self._burst_size -= len(self._burst.popleft())


def _sounds_within(chunk: Chunk, start_ms: int, end_ms: int) -> bool:
    if chunk.starts_at_ms is None or chunk.state == ChunkState.DISCARDED:
        return False
    return chunk.starts_at_ms < end_ms and chunk.starts_at_ms + chunk.duration_ms > start_ms


def _closed_queue() -> asyncio.Queue:
    queue: asyncio.Queue = asyncio.Queue(1)
    queue.put_nowait(None)
    return queue


class LiveStreams:
    """The live streams of all channels, started on first listener and stopped when idle."""

    def __init__(self, audio: AudioStore, config: LiveConfig, clock: Clock, metrics: Telemetry | None = None):
        self.audio, self.config, self.clock = audio, config, clock
        self.metrics = metrics or Telemetry()
        self.streams: dict[str, LiveStream] = {}
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task | None = None

    async def stream(self, runner: ChannelRunner) -> LiveStream:
        async with self._lock:
            live = self.streams.get(runner.name)
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
