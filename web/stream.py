"""One request as one progressive MP3 response that a plain <audio> element plays.

Chunks are written as soon as they exist, with the sentence gap as encoded
silence between them, so the stream's clock matches the request's timeline
while nothing slips. `?offset_ms=N` starts N ms into that content: whole
pieces before N are skipped and the piece containing N is re-encoded from its
lossless copy, cut at the exact sample.
"""

import asyncio

from aiohttp import web

from broadcaster.core.model import Chunk, Request
from broadcaster.core.states import FINAL_REQUEST_STATES, ChunkState
from tts.encode import encode_mp3, read_flac, silence

from .http_util import int_query, path_id
from .keys import AUDIO, CONFIG, STATION

MAX_OFFSET_MS = 24 * 3_600_000
WAIT_SLICE_S = 5.0


class StreamWriter:
    def __init__(self, request: web.Request, response: web.StreamResponse, skip_ms: int):
        self.app = request.app
        self.response = response
        self.skip_ms = skip_ms
        self.bitrate = self.app[CONFIG].tts.mp3_bitrate_kbps
        self._silence: dict[tuple[int, int], bytes] = {}

    async def piece(self, duration_ms: int, full: bytes | None, cut) -> None:  # noqa: ANN001
        """Write one piece, or the part of it after the remaining skip."""
        if self.skip_ms >= duration_ms:
            self.skip_ms -= duration_ms
            return
        data = full if self.skip_ms == 0 and full is not None else await cut(self.skip_ms)
        self.skip_ms = 0
        await self.response.write(data)

    async def gap(self, duration_ms: int, sample_rate: int) -> None:
        async def cut(skip_ms: int) -> bytes:
            return await encode_mp3(silence(duration_ms - skip_ms, sample_rate), self.bitrate)

        key = (duration_ms, sample_rate)
        if self.skip_ms == 0 and key not in self._silence:
            self._silence[key] = await cut(0)
        await self.piece(duration_ms, self._silence.get(key), cut)

    async def chunk(self, chunk: Chunk) -> None:
        audio = self.app[AUDIO]

        async def cut(skip_ms: int) -> bytes:
            pcm = read_flac(await audio.read(chunk.request_id, chunk.chunk_id, "flac"))
            return await encode_mp3(pcm.trimmed(skip_ms), self.bitrate)

        full = None if self.skip_ms else await audio.read(chunk.request_id, chunk.chunk_id, "mp3")
        await self.piece(chunk.duration_ms, full, cut)


async def request_stream(request: web.Request) -> web.StreamResponse:
    request_id = path_id(request, "request_id", "request")
    offset_ms = int_query(request, "offset_ms", 0, MAX_OFFSET_MS)
    station = request.app[STATION]
    playback = await station.find_request(request_id)
    runner = station.runner_of(playback)
    response = web.StreamResponse(headers={"Content-Type": "audio/mpeg", "Cache-Control": "no-store"})
    await response.prepare(request)
    writer = StreamWriter(request, response, offset_ms)
    gap_ms = request.app[CONFIG].timeline.sentence_gap_ms
    sent = 0
    while True:
        sent = await _write_new(writer, playback, sent, gap_ms)
        if _complete(playback, sent) or runner is None:
            break
        await runner.wait_change(WAIT_SLICE_S)
    await response.write_eof()
    return response


async def _write_new(writer: StreamWriter, playback: Request, sent: int, gap_ms: int) -> int:
    while sent < len(playback.chunks):
        chunk = playback.chunks[sent]
        if chunk.state == ChunkState.DISCARDED:
            return len(playback.chunks)  # the request failed: nothing after this is heard
        if sent:
            await writer.gap(gap_ms, chunk.sample_rate)
        await writer.chunk(chunk)
        sent += 1
        await asyncio.sleep(0)
    return sent


def _complete(playback: Request, sent: int) -> bool:
    if playback.state in FINAL_REQUEST_STATES:
        return True
    return playback.generated and sent >= len(playback.chunks)
