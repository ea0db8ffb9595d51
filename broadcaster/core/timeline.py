"""Late-join and lead-time arithmetic on a scheduled timeline (pure)."""

from dataclasses import dataclass

from .model import Chunk


@dataclass(frozen=True)
class TimelineConfig:
    lead_ms: int = 500  # how far ahead of "now" new audio is placed, so listeners can fetch it
    max_lead_ms: int = 500  # up to this far when listeners report needing longer (lead.py)
    min_lead_ms: int | None = None  # down to this when they report needing less (None: lead_ms)
    sentence_gap_ms: int = 250  # silence between chunks of one request
    request_gap_ms: int = 600  # silence between two requests
    generation_timeout_ms: int = 180_000  # for an open narration: from its latest append
    generate_ahead_ms: int = 300_000  # audio made and not yet played past which the next request waits to be made
    open_idle_flush_ms: int = 1500  # an open narration's unfinished sentence is spoken after this long without text
    open_idle_timeout_ms: int = 120_000  # an open narration idle this long is closed with what it has


@dataclass(frozen=True)
class Position:
    """Where the timeline is at a moment: `offset_ms` < 0 means the chunk starts in -offset_ms."""

    chunk: Chunk
    offset_ms: int


def position_at(chunks: list[Chunk], now_ms: int) -> Position | None:
    """The chunk playing at `now_ms` and the offset into it, else the next one due."""
    upcoming: Chunk | None = None
    for chunk in chunks:
        if chunk.starts_at_ms is None:
            break
        if chunk.starts_at_ms <= now_ms < chunk.starts_at_ms + chunk.duration_ms:
            return Position(chunk, now_ms - chunk.starts_at_ms)
        if chunk.starts_at_ms > now_ms and upcoming is None:
            upcoming = chunk
    if upcoming is None:
        return None
    return Position(upcoming, now_ms - upcoming.starts_at_ms)


def place_chunk(cursor_ms: int | None, gap_ms: int, now_ms: int, lead_ms: int) -> tuple[int, int]:
    """Start time for the next chunk, and how far it slipped behind where it was due.

    Due is the end of the previous audio plus the gap. A chunk ready early
    enough for listeners to fetch it (at least half the lead before it is due)
    starts exactly when due. One that is later (an underrun) is placed `lead_ms`
    ahead of now instead: the timeline slips, and audio never overlaps or gets
    cut into. With nothing before it, a chunk starts `lead_ms` ahead of now.
    """
    if cursor_ms is None:
        return now_ms + lead_ms, 0
    due = cursor_ms + gap_ms
    if due - now_ms >= lead_ms // 2:
        return due, 0
    start = now_ms + lead_ms
    return start, start - due
