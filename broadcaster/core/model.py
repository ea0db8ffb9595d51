"""Playback requests and their chunks, source-agnostic.

A request is the audio of one submission, a narration message ("speech") or a
music track ("track"), cut into ordered chunks. Its `sentences` are the units
the source produces chunks from (sentences of speech, fixed-length segments of
a track); chunk `seq` indexes into them.
"""

from dataclasses import dataclass, field
from enum import StrEnum

from .states import (
    ChunkEvent,
    ChunkState,
    RequestEvent,
    RequestState,
    next_chunk_state,
    next_request_state,
)


class RepeatMode(StrEnum):
    OFF = "off"  # the queue plays once
    ONE = "one"  # each request, once it is on the air, is queued again right after itself
    ALL = "all"  # each request, once it is on the air, is queued again at the end


@dataclass
class Chunk:
    chunk_id: str
    request_id: str
    seq: int
    text: str
    duration_ms: int
    ready_at_ms: int
    state: ChunkState = ChunkState.READY
    starts_at_ms: int | None = None
    sample_rate: int = 0  # exact length is samples / sample_rate; duration_ms is its rounding
    samples: int = 0
    channels: int = 1
    from_ms: int | None = None  # cut by a pause: what comes before this moment was heard before it

    @property
    def sounds_from_ms(self) -> int | None:
        """When it is (again) heard from: its start, or the resume after a pause that cut it."""
        if self.starts_at_ms is None:
            return None
        return self.starts_at_ms if self.from_ms is None else max(self.starts_at_ms, self.from_ms)

    @property
    def scheduled(self) -> bool:
        return self.starts_at_ms is not None

    @property
    def ends_at_ms(self) -> int | None:
        if self.starts_at_ms is None:
            return None
        return self.starts_at_ms + self.duration_ms

    def apply(self, event: ChunkEvent) -> None:
        self.state = next_chunk_state(self.state, event)


@dataclass
class Writing:
    """An open narration: its text is still being written (appended to) by its producer."""

    tail: str = ""  # the text after its last complete sentence, as written
    tail_sentences: tuple[str, ...] = ()  # what the tail says if spoken as it is (idle flush, close)
    appended_at_ms: int = 0  # the latest append (or open, or restart): idle flush and idle close count from it


@dataclass
class Request:
    request_id: str
    channel: str
    text: str
    sentences: list[str]
    created_at_ms: int
    state: RequestState = RequestState.PENDING
    generation_started_ms: int | None = None
    finished_at_ms: int | None = None
    error: str | None = None
    chunks: list[Chunk] = field(default_factory=list)
    kind: str = "speech"  # or "track"
    title: str | None = None  # tracks: from the file's tags
    artist: str | None = None
    duration_ms: int | None = None  # tracks: known before the first chunk exists
    auto: bool = False  # queued by the auto-DJ: anything a producer queues goes before it
    repeat_of: str | None = None  # a repeat copy: the request it copies (not persisted)
    over: bool = False  # talk-over: narration on the air at once, over the track playing (Channel.overlay)
    writing: Writing | None = None  # set while the narration is open: more sentences may come
    voice: str | None = None  # narration: a configured voice ([tts.voices]); None is the default one

    @property
    def generated(self) -> bool:
        """All its audio is made: every sentence, and no more can come."""
        return self.writing is None and len(self.chunks) == len(self.sentences)

    @property
    def has_work(self) -> bool:
        """A sentence is waiting for its audio."""
        return len(self.chunks) < len(self.sentences)

    @property
    def starts_at_ms(self) -> int | None:
        return self.chunks[0].starts_at_ms if self.chunks else None

    @property
    def next_seq(self) -> int:
        return len(self.chunks)

    def live_chunks(self) -> list[Chunk]:
        return [c for c in self.chunks if c.state != ChunkState.DISCARDED]

    def scheduled_end_ms(self) -> int | None:
        ends = [c.ends_at_ms for c in self.live_chunks() if c.scheduled]
        return max(ends) if ends else None

    def apply(self, event: RequestEvent) -> None:
        self.state = next_request_state(self.state, event)
