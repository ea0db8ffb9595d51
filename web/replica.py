"""A channel run by another process, as this one can play it: a replica kept by the event feed.

In a cluster only a channel's owner has its ChannelRunner. Every process still serves the
channel's live.mp3 and progressive streams, from a replica built out of the messages its
listeners get (web/feed.py): a reset starts it afresh from the snapshot, and each message moves
it on as it moves a listener's page. It holds what the streams read, as the core's model objects:
the requests in line and lately finished, each with its chunks as they are placed on the
timeline.

Only what the wire says is filled in (ids, seq, text, times, states, a track's tags); the rest
keeps its default (`created_at_ms`, a chunk's `ready_at_ms` and sample format), and a request's
`sentences` are placeholders, as many as it has chunks in all. Chunks appear when they are
placed, not when they are made. A reset without a snapshot keeps what was known: the messages
that follow correct it.

The states are copied from the owner, which made the moves: the replica sets them rather than
running them through the transition tables. Pure: messages in, no clock, no I/O; a stream may
wait for the next change.
"""

import asyncio
import bisect
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from broadcaster.core.bed import HOLD_MS, RELEASE_MS, Bed, BedTrack, Segment, bed_from, speech_of
from broadcaster.core.model import Chunk, Request, Writing
from broadcaster.core.states import FINAL_REQUEST_STATES, ChunkEvent, ChunkState, RequestState
from broadcaster.errors import BadInput
from broadcaster.runtime.bus import BusUnavailable
from broadcaster.runtime.live import Lineup
from broadcaster.runtime.runner import ChannelRunner

from .messages import TAKEOVER

if TYPE_CHECKING:
    from .feed import Feeds

RECENT_KEPT = 32  # finished requests kept: their last chunks may still sound, a stream may ask after them
Message = dict[str, Any]


class ReplicaChannel:
    """The requests of a channel, read as the core's Channel is read: `line`, then `recent`."""

    def __init__(self, name: str):
        self.name = name
        self.line: list[Request] = []
        self.overlay: list[Request] = []  # talk-over narration on the air over the track
        self.recent: deque[Request] = deque(maxlen=RECENT_KEPT)
        self.paused_at_ms: int | None = None
        self.bed: Bed | None = None
        self.fading_beds: tuple[Bed, ...] = ()

    def speech(self, now_ms: int) -> list[tuple[int, int]]:
        """As the core's Channel.speech: what the bed ducks under."""
        horizon = now_ms if self.paused_at_ms is None else min(now_ms, self.paused_at_ms)
        return speech_of((*self.recent, *self.line, *self.overlay), horizon - HOLD_MS - RELEASE_MS)

    def talk_over(self, now_ms: int) -> list[tuple[int, int]]:
        horizon = now_ms if self.paused_at_ms is None else min(now_ms, self.paused_at_ms)
        return speech_of((r for r in (*self.recent, *self.overlay) if r.over), horizon - HOLD_MS - RELEASE_MS)

    def find_request(self, request_id: str) -> Request | None:
        for request in (*self.line, *self.overlay, *self.recent):
            if request.request_id == request_id:
                return request
        return None

    def known(self) -> dict[str, Request]:
        return {request.request_id: request for request in (*self.recent, *self.line, *self.overlay)}


class ChannelReplica:
    """One channel's replica: `reset` and `take` feed it; streams read `channel` and wait on `wait_change`."""

    def __init__(self, name: str):
        self.channel = ReplicaChannel(name)
        self._changed = asyncio.Event()

    @property
    def name(self) -> str:
        return self.channel.name

    def find_request(self, request_id: str) -> Request | None:
        return self.channel.find_request(request_id)

    async def wait_change(self, timeout_s: float) -> None:
        """Until the next reset or batch of messages, or `timeout_s`, as ChannelRunner's."""
        changed = self._changed
        try:
            async with asyncio.timeout(timeout_s):
                await changed.wait()
        except TimeoutError:
            pass

    def reset(self, state: Message | None) -> None:
        """Start again from a snapshot's state (`queue_state_json`); None keeps what is known."""
        if state is not None:
            self._restore(state)
        self._wake()

    def take(self, messages: Iterable[Message]) -> None:
        """Apply messages in the order they were published; types it does not need are passed over."""
        for message in messages:
            apply = _APPLY.get(message.get("type"))
            if apply is not None:
                apply(self, message)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- a reset -------------------------------------------------------------------------

    def _restore(self, state: Message) -> None:
        known = self.channel.known()
        line = []
        if (playing := state.get("now_playing")) is not None:
            head = self._described(known, playing)
            head.chunks = [_chunk(head.request_id, c) for c in playing.get("chunks", ())]
            line.append(head)
        for item in state.get("queue", ()):
            request = self._described(known, item)
            if "chunks" in item:  # on the air already, in its lead (web/messages.py)
                request.chunks = [_chunk(request.request_id, c) for c in item["chunks"]]
            line.append(request)
        self.channel.line = line
        self.channel.overlay = []
        for item in state.get("over", ()):
            request = self._described(known, item)
            request.chunks = [_chunk(request.request_id, c) for c in item.get("chunks", ())]
            self.channel.overlay.append(request)
        self.channel.recent.clear()
        self.channel.recent.extend(self._described(known, item) for item in reversed(state.get("recent", ())))
        self.channel.paused_at_ms = state.get("paused_at_ms")
        self._beds_changed(state)

    def _described(self, known: dict[str, Request], item: Message) -> Request:
        """The request `item` (a now_playing, queue or recent item) describes, known or new, brought up to date."""
        request = known.get(item["request_id"]) or Request(item["request_id"], self.name, "", [], 0)
        _describe(request, item)
        return request

    # -- messages ------------------------------------------------------------------------

    def _stream_started(self, message: Message) -> None:
        request = self.find_request(message["request_id"])
        if request is None and message.get("over"):
            request = Request(message["request_id"], self.name, "", [], 0)
            self.channel.overlay.append(request)  # talk-over: not in line
        elif request is None:
            request = Request(message["request_id"], self.name, "", [], 0)
            line = self.channel.line
            on_air = next((i for i, r in enumerate(line) if not r.chunks), len(line))
            line.insert(on_air, request)  # after those on the air already, before those waiting
        _describe(request, message)
        request.state = RequestState.GENERATING

    def _chunk_ready(self, message: Message) -> None:
        request = self.find_request(message["request_id"])
        if request is None:
            return  # not in the snapshot nor announced since: nothing to hang it on (see the module's doc)
        chunk = _chunk(request.request_id, message)
        request.chunks = [c for c in request.chunks if c.seq != chunk.seq]
        bisect.insort(request.chunks, chunk, key=lambda c: c.seq)

    def _shifted(self, message: Message) -> None:
        request = self.find_request(message["request_id"])
        for chunk in request.chunks if request else ():
            if chunk.chunk_id == message["chunk_id"]:
                chunk.starts_at_ms = message["starts_at_ms"]

    def _paused(self, message: Message) -> None:
        self.channel.paused_at_ms = message["paused_at_ms"]

    def _resumed(self, message: Message) -> None:
        """As the owner's Channel.resume moved them: what had not ended by the pause, later by the shift."""
        self.channel.paused_at_ms = None
        paused_at, shift = message["paused_at_ms"], message["shift_ms"]
        for request in (*self.channel.line, *self.channel.overlay, *self.channel.recent):
            for chunk in request.chunks:
                if shift and chunk.starts_at_ms is not None and chunk.ends_at_ms > paused_at:
                    if chunk.starts_at_ms < paused_at:
                        chunk.from_ms = message["resumes_at_ms"]
                    chunk.starts_at_ms += shift
            if shift and request.finished_at_ms is not None and request.finished_at_ms > paused_at:
                request.finished_at_ms += shift

    def _beds_changed(self, message: Message) -> None:
        bed = message.get("bed")
        self.channel.bed = None if bed is None else _bed(bed)
        self.channel.fading_beds = tuple(_bed(b) for b in message.get("fading_beds", ()))

    def _closed(self, message: Message) -> None:
        request = self.find_request(message["request_id"])
        if request is not None:
            request.writing = None
            _describe(request, message)  # its chunks_total is final

    def _played(self, message: Message) -> None:
        self._finish(message["request_id"], RequestState.PLAYED, message["ended_at_ms"], ())

    def _failed(self, message: Message) -> None:
        request = self._finish(
            message["request_id"], RequestState.FAILED, message["audio_ends_at_ms"], message["discarded_chunk_ids"]
        )
        if request is not None:
            request.error = message["reason"]

    def _cancelled(self, message: Message) -> None:
        self._finish(
            message["request_id"], RequestState.CANCELLED, message["stopped_at_ms"], message["discarded_chunk_ids"]
        )

    def _finish(self, request_id: str, state: RequestState, at_ms: int, discarded: Iterable[str]) -> Request | None:
        """The request left the line: its discarded chunks are never heard, the others play out."""
        request = self.find_request(request_id)
        if request is None:
            return None
        request.state, request.finished_at_ms = state, at_ms
        dropped = set(discarded)
        for chunk in request.chunks:
            if chunk.state == ChunkState.READY:
                chunk.apply(ChunkEvent.DISCARD if chunk.chunk_id in dropped else ChunkEvent.PLAY_OUT)
        self._retire(request)
        return request

    def _retire(self, request: Request) -> None:
        for running in (self.channel.line, self.channel.overlay):
            if request in running:
                running.remove(request)
        if request not in self.channel.recent:
            self.channel.recent.append(request)

    def _queue_updated(self, message: Message) -> None:
        """The line as the owner lists it, but for its head (on the air, or its audio under way), which
        the list leaves out: the one request in line it does not list, unless its first item is at 0."""
        known = self.channel.known()
        for item in message.get("recent", ()):
            if (request := known.get(item["request_id"])) is not None:
                _describe(request, item)
                self._retire(request)
        queue = message.get("queue", ())
        listed = [self._described(known, item) for item in queue]
        ids = {request.request_id for request in listed}
        heads = [r for r in self.channel.line if r.request_id not in ids and not _over(r)]
        heads = heads[: queue[0].get("position", 1) if queue else 1]
        for head in heads:
            head.state = RequestState.GENERATING  # what the owner's head is (core Channel.now_playing)
        self.channel.line = heads + listed


_APPLY: dict[str, Callable[[ChannelReplica, Message], None]] = {
    "audio_stream_started": ChannelReplica._stream_started,
    "audio_chunk_ready": ChannelReplica._chunk_ready,
    "timeline_shifted": ChannelReplica._shifted,
    "channel_paused": ChannelReplica._paused,
    "channel_resumed": ChannelReplica._resumed,
    "bed_changed": ChannelReplica._beds_changed,
    "request_closed": ChannelReplica._closed,
    "request_played": ChannelReplica._played,
    "request_failed": ChannelReplica._failed,
    "request_cancelled": ChannelReplica._cancelled,
    "playback_queue_updated": ChannelReplica._queue_updated,
    TAKEOVER: lambda replica, message: replica._restore(message["state"]),
}


def _over(request: Request) -> bool:
    return request.state in FINAL_REQUEST_STATES


def _describe(request: Request, item: Message) -> None:
    """Copy what a wire item says of a request (web/messages.py); what it leaves out stays."""
    if "text" in item:
        request.text = item["text"]
    if "status" in item:
        request.state = RequestState(item["status"])
    if "chunks_total" in item and len(request.sentences) != item["chunks_total"]:
        request.sentences = [""] * item["chunks_total"]
    if "kind" in item:
        request.kind, request.over = item["kind"], item.get("over", False)
        request.writing = Writing() if item.get("open") else None  # open: its stream is not over yet
        request.title, request.artist = item.get("title"), item.get("artist")
        request.duration_ms, request.auto = item.get("duration_ms"), item.get("auto", False)
    if "error" in item:
        request.error = item["error"]
    if "finished_at_ms" in item:
        request.finished_at_ms = item["finished_at_ms"]


def _chunk(request_id: str, item: Message) -> Chunk:
    """A chunk from its wire form (`chunk_json`): placed, with its text and length."""
    return Chunk(
        item["chunk_id"],
        request_id,
        item["seq"],
        item["text"],
        item["duration_ms"],
        ready_at_ms=0,
        starts_at_ms=item["starts_at_ms"],
        from_ms=item.get("from_ms"),
    )


def _bed(item: Message) -> Bed:
    """A bed from its wire form (`bed_json`)."""
    tracks = tuple(
        BedTrack(t["track_id"], t["title"], tuple(Segment(s["chunk_id"], s["duration_ms"]) for s in t["segments"]))
        for t in item["tracks"]
    )
    return bed_from(item, tracks)


class ReplicaUnavailable(BadInput):
    status = 503
    code = "unavailable"
    retry_after_s = 1


async def replica_of(feeds: "Feeds", name: str) -> ChannelReplica:
    """The replica of a channel, following its feed from now on if this process did not yet."""
    try:
        return (await feeds.feed(name)).replica
    except BusUnavailable:
        raise ReplicaUnavailable(
            f"channel {name!r} cannot be followed now (the event bus is away); try again"
        ) from None


class Followed:
    """A channel as this process can play it now: its runner while it runs here, else its replica.
    Read afresh every time, so a stream plays on across a handover either way."""

    def __init__(self, runners: Mapping[str, ChannelRunner], replica: ChannelReplica):
        self.runners, self.replica = runners, replica

    @property
    def name(self) -> str:
        return self.replica.name

    @property
    def channel(self) -> Lineup:
        runner = self.runners.get(self.name)
        return self.replica.channel if runner is None else runner.channel
