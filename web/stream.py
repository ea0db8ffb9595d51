"""One request as one progressive MP3 response that a plain <audio> element plays.

Each response has its own ffmpeg encoder fed with the chunks' exact PCM and
the sentence gap as silence, so the stream's content follows the request's
timeline sample for sample (ignoring underrun slips, which only pause it).
Chunks are fed as soon as they exist; ffmpeg flushes every packet, so the
first audio leaves as soon as the first sentence does. `?offset_ms=N` starts
N ms into that content, cut at the exact sample.
"""

import asyncio
import contextlib

import numpy as np
from aiohttp import web

from broadcaster.core.model import Chunk, Request
from broadcaster.core.states import FINAL_REQUEST_STATES, ChunkState
from broadcaster.runtime.telemetry import Telemetry
from tts.encode import Mp3Encoder, decode_flac
from tts.tracks import TRACK_CHANNELS, TRACK_RATE

from .http_util import int_query, path_id
from .access import remote_of, require_listener
from .keys import ACCESS, AUDIO, CONFIG, ENGINE, METRICS, STATION

MAX_OFFSET_MS = 24 * 3_600_000
WAIT_SLICE_S = 5.0
COPY_BYTES = 16 * 1024


async def request_stream(request: web.Request) -> web.StreamResponse:
    request_id = path_id(request, "request_id", "request")
    offset_ms = int_query(request, "offset_ms", 0, MAX_OFFSET_MS)
    station = request.app[STATION]
    playback = await station.find_request(request_id)
    await require_listener(request, playback.channel)
    with request.app[ACCESS].connection(remote_of(request)):
        return await _stream(request, playback, offset_ms)


async def _stream(request: web.Request, playback: Request, offset_ms: int) -> web.StreamResponse:
    station = request.app[STATION]
    rate, channels = _format(playback, request.app[ENGINE].sample_rate)
    encoder = await Mp3Encoder.start(rate, request.app[CONFIG].tts.mp3_bitrate_kbps * channels, "pipe:1", channels)
    response = web.StreamResponse(headers={"Content-Type": "audio/mpeg", "Cache-Control": "no-store"})
    await response.prepare(request)
    feeder = _Feeder(request, encoder, rate, channels, offset_ms)
    feed = asyncio.create_task(feeder.feed(playback, station.runner_of(playback)))
    copy = asyncio.create_task(_copy(encoder, response, request.app[METRICS]))
    try:
        # If the listener leaves, copying fails first and feeding must stop with it;
        # otherwise feeding ends, ffmpeg flushes, and copying drains the rest.
        await asyncio.wait({feed, copy}, return_when=asyncio.FIRST_EXCEPTION)
        if feed.done() and feed.exception() is None:
            await copy
    except (ConnectionError, BrokenPipeError):
        pass  # the listener went away
    finally:
        for task in (feed, copy):
            task.cancel()
        await asyncio.gather(feed, copy, return_exceptions=True)
        with contextlib.suppress(Exception):
            await encoder.abandon()
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


def _format(playback: Request, speech_rate: int) -> tuple[int, int]:
    """Sample rate and channels of the request's audio (known before its first chunk exists)."""
    if playback.chunks:
        return playback.chunks[0].sample_rate, playback.chunks[0].channels
    return (TRACK_RATE, TRACK_CHANNELS) if playback.kind == "track" else (speech_rate, 1)


async def _copy(encoder: Mp3Encoder, response: web.StreamResponse, metrics: Telemetry) -> None:
    while data := await encoder.proc.stdout.read(COPY_BYTES):
        await response.write(data)
        metrics.sent("progressive", len(data))


class _Feeder:
    """Writes the request's PCM, chunk by chunk as they appear, into the encoder."""

    def __init__(self, request: web.Request, encoder: Mp3Encoder, rate: int, channels: int, skip_ms: int):
        self.audio = request.app[AUDIO]
        self.gap_shape = (1,) if channels == 1 else (1, channels)
        self.gap_ms = request.app[CONFIG].timeline.sentence_gap_ms
        self.stdin = encoder.proc.stdin
        self.rate = rate
        self.skip = skip_ms * rate // 1000  # samples still to drop from the front

    async def feed(self, playback: Request, runner) -> None:  # noqa: ANN001
        await self.follow(playback, runner)
        self.stdin.close()

    async def follow(self, playback: Request, runner) -> None:  # noqa: ANN001
        sent = 0
        while True:
            while sent < len(playback.chunks):
                chunk = playback.chunks[sent]
                if chunk.state == ChunkState.DISCARDED:
                    return  # the request failed: nothing after this is heard
                if sent and playback.kind != "track":  # a track's segments join without a pause
                    gap = self.gap_ms * self.rate // 1000
                    await self.write(np.zeros((gap, *self.gap_shape[1:]), dtype=np.int16))
                await self.write(await self.samples(chunk))
                sent += 1
            if playback.state in FINAL_REQUEST_STATES or runner is None:
                return
            if playback.generated and sent >= len(playback.chunks):
                return
            await runner.wait_change(WAIT_SLICE_S)

    async def samples(self, chunk: Chunk) -> np.ndarray:
        return (await decode_flac(await self.audio.read(chunk.request_id, chunk.chunk_id, "flac"))).samples

    async def write(self, samples: np.ndarray) -> None:
        dropped = min(self.skip, len(samples))
        self.skip -= dropped
        if dropped < len(samples):
            self.stdin.write(samples[dropped:].astype("<i2").tobytes())
            await self.stdin.drain()
