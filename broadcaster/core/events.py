"""What the core tells its adapters happened. Adapters broadcast and persist."""

from dataclasses import dataclass

from .bed import Bed
from .model import Chunk, Request


@dataclass(frozen=True)
class StreamStarted:
    request: Request


@dataclass(frozen=True)
class ChunkScheduled:
    request: Request
    chunk: Chunk


@dataclass(frozen=True)
class TimelineShifted:
    request: Request
    chunk: Chunk
    shift_ms: int


@dataclass(frozen=True)
class RequestFailed:
    request: Request
    reason: str
    failed_at_ms: int
    discarded_chunk_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestCancelled:
    """A producer cancelled a queued request or skipped the one on the air (audio stops at `stopped_at_ms`)."""

    request: Request
    skipped: bool
    stopped_at_ms: int
    discarded_chunk_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestPlayed:
    request: Request


@dataclass(frozen=True)
class RequestPlaced:
    """Every chunk of the request has its place on the timeline: it will play (unless stopped)."""

    request: Request


@dataclass(frozen=True)
class RequestClosed:
    """An open narration takes no more text: `request.sentences` is all it will say."""

    request: Request


@dataclass(frozen=True)
class ChannelPaused:
    """Everything stops at `at_ms` (a lead ahead, so every listener stops on the same sample)."""

    at_ms: int


@dataclass(frozen=True)
class ChannelResumed:
    """What stopped at `paused_at_ms` goes on at `at_ms`: every chunk that had not ended by the pause
    moved `at_ms - paused_at_ms` later (0 when the resume came before the pause took effect)."""

    paused_at_ms: int
    at_ms: int

    @property
    def shift_ms(self) -> int:
        return self.at_ms - self.paused_at_ms


@dataclass(frozen=True)
class BedChanged:
    """The channel's beds now: the one playing (or none) and those still fading out."""

    bed: Bed | None
    fading: tuple[Bed, ...] = ()
    stopped: Bed | None = None  # a stop's bed, fading out (or cut at once, if it had not begun to sound)


@dataclass(frozen=True)
class QueueChanged:
    progress: bool = False  # only progress (synthesis began, a chunk made ahead): announcing it may wait


Event = (
    StreamStarted
    | ChunkScheduled
    | TimelineShifted
    | RequestFailed
    | RequestCancelled
    | RequestPlayed
    | RequestPlaced
    | ChannelPaused
    | ChannelResumed
    | BedChanged
    | QueueChanged
)
