"""One request as one progressive MP3 response that a plain <audio> element plays.

Each response has its own ffmpeg encoder fed with the chunks' exact PCM and
the sentence gap as silence, so the stream's content follows the request's
timeline sample for sample (ignoring underrun slips, which only pause it).
Chunks are fed as soon as they exist; ffmpeg flushes every packet, so the
first audio leaves as soon as the first sentence does. `?offset_ms=N` starts
N ms into that content, cut at the exact sample.

An encoder is a process, so they are bounded: at most `[limits]
max_stream_encoders` at once on the server (then 503), and a listener that
reads nothing for `stream_write_timeout_s` has its stream cut off.

In a cluster, a process that does not run the request's channel serves the stream
itself: the stored request, with the chunks the channel's replica hears announced
(web/replica.py), until the replica hears it end.
"""

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable

import numpy as np
from aiohttp import web

from broadcaster.core.model import Chunk, Request
from broadcaster.core.states import FINAL_REQUEST_STATES, ChunkState
from broadcaster.errors import NotFound
from broadcaster.runtime.runner import ChannelRunner
from broadcaster.runtime.telemetry import Telemetry
from db.outage import database_unavailable
from tts.encode import Mp3Encoder, decode_flac
from tts.tracks import TRACK_CHANNELS, TRACK_RATE

from .access import remote_of, require_listener
from .http_util import LEFT_POLL_S, cap_send_buffer, client_connected, int_query, path_id
from .keys import ACCESS, AUDIO, CLUSTER, CONFIG, ENGINE, FEEDS, METRICS, STATION, WATCH
from .replica import ChannelReplica, replica_of
from .revocation import Watched

log = logging.getLogger(__name__)

MAX_OFFSET_MS = 24 * 3_600_000
WAIT_SLICE_S = 5.0
COPY_BYTES = 16 * 1024
# The kernel's share of what a listener has not read yet. Left to itself it grows to megabytes, which a
# stalled listener fills without a write ever waiting, so its encoder would outlive the write timeout.
SOCKET_BUFFER_BYTES = 64 * 1024
STREAM_HEADERS = {"Content-Type": "audio/mpeg", "Cache-Control": "no-store"}


async def request_stream(request: web.Request) -> web.StreamResponse:
    request_id = path_id(request, "request_id", "request")
    offset_ms = int_query(request, "offset_ms", 0, MAX_OFFSET_MS)
    station, access = request.app[STATION], request.app[ACCESS]
    playback = await station.find_request(request_id)
    credential = await require_listener(request, playback.channel)
    if request.method == "HEAD":  # the headers a GET would get; no encoder, no audio
        response = web.StreamResponse(headers=STREAM_HEADERS)
        await response.prepare(request)
        return response
    with (
        access.connection(remote_of(request)),
        access.stream_encoder(remote_of(request)),
        request.app[WATCH].watch(playback.channel, credential) as watched,
    ):  # or 429, 503
        return await _stream(request, playback, offset_ms, watched)


async def _stream(request: web.Request, playback: Request, offset_ms: int, watched: Watched) -> web.StreamResponse:
    limits = request.app[CONFIG].limits
    following = await _following(request.app, playback)
    if following is not None:
        playback = await following.current()
    rate, channels = _format(playback, request.app[ENGINE].sample_rate)
    encoder = await Mp3Encoder.start(rate, request.app[CONFIG].tts.mp3_bitrate_kbps * channels, "pipe:1", channels)
    response = web.StreamResponse(headers=STREAM_HEADERS)
    await response.prepare(request)
    cap_send_buffer(request, SOCKET_BUFFER_BYTES)
    feeder = _Feeder(request, encoder, rate, channels, offset_ms)
    feed = asyncio.create_task(feeder.feed(playback, following))
    copy = asyncio.create_task(_copy(encoder, response, request.app[METRICS], limits.stream_write_timeout_s))
    revoked = asyncio.Event()
    watched.on_revoke(lambda reason: revoked.set())
    stop = asyncio.create_task(_revoked_or_gone(revoked, request))
    try:
        await _until_done(feed, copy, stop)
    finally:
        for task in (feed, copy, stop):
            task.cancel()
        await asyncio.gather(feed, copy, stop, return_exceptions=True)
        with contextlib.suppress(Exception):
            await encoder.abandon()
    stalled = not copy.cancelled() and isinstance(copy.exception(), StalledClient)
    if stalled or watched.reason:
        log.info(
            "progressive stream of %s cut off: %s", playback.request_id, copy.exception() if stalled else watched.reason
        )
    await _end(request, response, limits.stream_write_timeout_s, stalled)
    return response


async def _revoked_or_gone(revoked: asyncio.Event, request: web.Request) -> None:
    """Returns once the credential is revoked or the listener has hung up. A listener that leaves
    while nothing is being written (its request waits for audio) is noticed here, so its encoder
    slot comes back at once instead of when the next write fails."""
    while not revoked.is_set() and client_connected(request):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(revoked.wait(), LEFT_POLL_S)


async def _end(request: web.Request, response: web.StreamResponse, timeout_s: float, stalled: bool) -> None:
    """End the response cleanly if the listener takes the end; drop the connection if it is not reading."""
    try:
        if not stalled:
            async with asyncio.timeout(timeout_s):
                await response.write_eof()
            return
    except ConnectionError:
        return
    except TimeoutError:
        pass
    if request.transport is not None:
        request.transport.abort()  # what it did not read stays unread: there is no clean end to wait for


async def _until_done(feed: asyncio.Task, copy: asyncio.Task, stop: asyncio.Task) -> None:
    """Until copying ends (the whole MP3 sent, or the listener gone or stalled), feeding fails, or the
    listener's credential is revoked. Feeding ending well is not the end: ffmpeg flushes, copying drains."""
    waiting = {feed, copy, stop}
    while copy in waiting and stop in waiting:
        done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if feed in done and (feed.cancelled() or feed.exception() is not None):
            return


def _format(playback: Request, speech_rate: int) -> tuple[int, int]:
    """Sample rate and channels of the request's audio (known before its first chunk exists)."""
    if playback.chunks and playback.chunks[0].sample_rate:  # a chunk the wire told of has no format
        return playback.chunks[0].sample_rate, playback.chunks[0].channels
    return (TRACK_RATE, TRACK_CHANNELS) if playback.kind == "track" else (speech_rate, 1)


async def _copy(encoder: Mp3Encoder, response: web.StreamResponse, metrics: Telemetry, timeout_s: float) -> None:
    while data := await encoder.proc.stdout.read(COPY_BYTES):
        try:
            async with asyncio.timeout(timeout_s):
                await response.write(data)
        except TimeoutError:
            raise StalledClient(f"the client read nothing for {timeout_s:g} s") from None
        metrics.sent("progressive", len(data))


class StalledClient(Exception):
    """A write to the listener did not complete in time: its buffers are full and it is not reading."""


class _Feeder:
    """Writes the request's PCM, chunk by chunk as they appear, into the encoder."""

    def __init__(self, request: web.Request, encoder: Mp3Encoder, rate: int, channels: int, skip_ms: int):
        self.audio = request.app[AUDIO]
        self.gap_shape = (1,) if channels == 1 else (1, channels)
        self.gap_ms = request.app[CONFIG].timeline.sentence_gap_ms
        self.stdin = encoder.proc.stdin
        self.rate = rate
        self.skip = skip_ms * rate // 1000  # samples still to drop from the front

    async def feed(self, playback: Request, following: "Following | None") -> None:
        await self.follow(playback, following)
        self.stdin.close()

    async def follow(self, playback: Request, following: "Following | None") -> None:
        sent = 0  # the seq of the next chunk to write
        while True:
            while (chunk := _chunk(playback, sent)) is not None:
                if chunk.state == ChunkState.DISCARDED:
                    return  # the request failed: nothing after this is heard
                if sent and playback.kind != "track":  # a track's segments join without a pause
                    gap = self.gap_ms * self.rate // 1000
                    await self.write(np.zeros((gap, *self.gap_shape[1:]), dtype=np.int16))
                await self.write(await self.samples(chunk))
                sent += 1
            if playback.state in FINAL_REQUEST_STATES or following is None:
                return
            if playback.generated and sent >= len(playback.chunks):
                return
            playback = await following.next()

    async def samples(self, chunk: Chunk) -> np.ndarray:
        return (await decode_flac(await self.audio.read(chunk.request_id, chunk.chunk_id, "flac"))).samples

    async def write(self, samples: np.ndarray) -> None:
        dropped = min(self.skip, len(samples))
        self.skip -= dropped
        if dropped < len(samples):
            self.stdin.write(samples[dropped:].astype("<i2").tobytes())
            await self.stdin.drain()


def _chunk(playback: Request, seq: int) -> Chunk | None:
    if seq < len(playback.chunks) and playback.chunks[seq].seq == seq:
        return playback.chunks[seq]
    return next((c for c in playback.chunks if c.seq == seq), None)


# -- what a stream follows while its request is not over ---------------------------------------------


async def _following(app: web.Application, playback: Request) -> "Following | None":
    """The runner of the request's channel if it runs here; in a cluster, else, the channel's replica."""
    station = app[STATION]
    if (runner := station.runner_of(playback)) is not None:
        elsewhere = None if CLUSTER not in app else lambda known: _on_replica(app, known)
        return OnRunner(runner, playback, elsewhere)
    if CLUSTER not in app or playback.state in FINAL_REQUEST_STATES:
        return None  # nothing more will come of it
    return await _on_replica(app, playback)


async def _on_replica(app: web.Application, playback: Request) -> "OnReplica":
    return OnReplica(await replica_of(app[FEEDS], playback.channel), playback, app[STATION].find_request)


class OnRunner:
    """A request of a channel run here: the runner's own object, changed in place. In a cluster, once
    the channel is handed over, the stream goes on from the replica, which the new owner's events reach."""

    def __init__(
        self,
        runner: ChannelRunner,
        playback: Request,
        elsewhere: "Callable[[Request], Awaitable[OnReplica]] | None" = None,
    ):
        self.runner, self.playback, self.elsewhere = runner, playback, elsewhere
        self.moved: OnReplica | None = None

    async def current(self) -> Request:
        return self.playback if self.moved is None else await self.moved.current()

    async def next(self) -> Request:
        if self.moved is None and self.runner.lost and self.elsewhere is not None:
            log.info(
                "progressive stream of %s goes on from the replica: the channel was handed over",
                self.playback.request_id,
            )
            self.moved = await self.elsewhere(dataclasses.replace(self.playback, chunks=list(self.playback.chunks)))
        if self.moved is not None:
            return await self.moved.next()
        await self.runner.wait_change(WAIT_SLICE_S)
        return self.playback


class OnReplica:
    """A request of a channel run elsewhere: its stored row, with the chunks the replica has heard of since.

    The owner stores a change before it announces it, so once the replica hears the request end, the
    row read again holds all of its chunks. The row is read again, too, every WAIT_SLICE_S while the
    replica does not know the request (it has not reached the line the replica holds, or it left it
    unheard by this process: its end is then in the row)."""

    def __init__(self, replica: ChannelReplica, stored: Request, find: Callable[[str], Awaitable[Request]]):
        self.replica, self.stored, self.find = replica, stored, find
        self.read_at = asyncio.get_running_loop().time()

    async def current(self) -> Request:
        heard = self.replica.find_request(self.stored.request_id)
        if heard is None:
            if asyncio.get_running_loop().time() - self.read_at >= WAIT_SLICE_S:
                await self._read()
        elif heard.state in FINAL_REQUEST_STATES and self.stored.state not in FINAL_REQUEST_STATES:
            if not _merged(self.stored, heard).generated:
                await self._read()  # it ended: the row has every chunk, some maybe unheard here
        return _merged(self.stored, self.replica.find_request(self.stored.request_id))

    async def next(self) -> Request:
        await self.replica.wait_change(WAIT_SLICE_S)
        return await self.current()

    async def _read(self) -> None:
        self.read_at = asyncio.get_running_loop().time()
        try:
            self.stored = await self.find(self.stored.request_id)
        except NotFound:
            pass  # purged meanwhile: what was heard is all there is
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            log.info("progressive stream of %s: database away, playing on what was announced", self.stored.request_id)


Following = OnRunner | OnReplica


def _merged(stored: Request, heard: Request | None) -> Request:
    """The stored request with the chunks and state the replica has heard since (a copy)."""
    if heard is None or heard is stored:
        return stored
    chunks = {c.seq: c for c in stored.chunks} | {c.seq: c for c in heard.chunks}
    state = stored.state if stored.state in FINAL_REQUEST_STATES else heard.state
    return dataclasses.replace(stored, state=state, chunks=[chunks[seq] for seq in sorted(chunks)])
