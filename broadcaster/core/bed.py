"""A channel's bed: music or ambience looping under the line, dipping while narration sounds (pure).

A bed is a loop of tracks, each a run of stored segments (as a queued track's chunks are), laid
end to end from an origin on the timeline and repeated for as long as the bed lasts. Where it is
at any server time follows from the origin alone, so every listener (and live.mp3) plays the
same segment at the same moment without the server announcing each repetition.

What is heard of it is the product of three gains, all functions of server time and of what was
announced, so every listener applies the same gain at the same moment and a late joiner joins
mid-ramp:

- its `volume`;
- its fades: in over `fade_in_ms` from `fades_in_at_ms` (a new bed crossfades with the one it
  replaces), out over `fade_out_ms` from `fades_out_at_ms` once it is replaced or stopped;
- the ducking: down to `duck_db` while narration sounds, with short ramps (`duck_envelope`).

A pause stops the bed with everything else; the resume moves all its times by the pause's length
(`Bed.shifted`), and it is heard again only from the resume, from where it stopped.
"""

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace

from .model import Request
from .states import ChunkState

ATTACK_MS = 150  # the bed is fully down this long after it starts dipping: when the voice begins
HOLD_MS = 400  # it stays down this long after the voice ends (and so through a sentence gap)
RELEASE_MS = 600  # then comes back up over this long
TALK_OVER_DUCK_DB = -12.0  # how far a track dips under talk-over narration


@dataclass(frozen=True)
class Segment:
    chunk_id: str
    duration_ms: int


@dataclass(frozen=True)
class BedTrack:
    request_id: str  # whose stored audio it is
    title: str
    segments: tuple[Segment, ...]

    @property
    def duration_ms(self) -> int:
        return sum(s.duration_ms for s in self.segments)


@dataclass(frozen=True)
class Sounding:
    """One repetition of one segment on the timeline."""

    chunk_id: str
    track_id: str  # whose stored audio it is
    starts_at_ms: int
    duration_ms: int


@dataclass(frozen=True)
class Bed:
    bed_id: str
    source: str  # what the producer named: a file or a folder under the music folder
    tracks: tuple[BedTrack, ...]  # one pass of the loop, in play order
    origin_ms: int  # where the first pass starts on the timeline
    volume: float = 1.0
    duck_db: float = -12.0
    fades_in_at_ms: int = 0
    fade_in_ms: int = 0
    fades_out_at_ms: int | None = None  # set once it is replaced or stopped
    fade_out_ms: int = 0
    heard_from_ms: int | None = None  # after a pause: what comes before this was heard before it

    @property
    def loop_ms(self) -> int:
        return sum(t.duration_ms for t in self.tracks)

    @property
    def ends_at_ms(self) -> int | None:
        return None if self.fades_out_at_ms is None else self.fades_out_at_ms + self.fade_out_ms

    @property
    def sounds_from_ms(self) -> int:
        return self.origin_ms if self.heard_from_ms is None else max(self.origin_ms, self.heard_from_ms)

    def fading_out(self, at_ms: int, fade_ms: int) -> "Bed":
        """The same bed, fading out to nothing from `at_ms` (replaced by another, or stopped)."""
        return replace(self, fades_out_at_ms=at_ms, fade_out_ms=fade_ms)

    def sounding(self, start_ms: int, end_ms: int) -> Iterator[Sounding]:
        """Every segment repetition heard (in part) between start_ms and end_ms, in order."""
        loop = self.loop_ms
        start_ms = max(start_ms, self.sounds_from_ms)
        if self.ends_at_ms is not None:
            end_ms = min(end_ms, self.ends_at_ms)
        if loop <= 0 or start_ms >= end_ms:
            return
        first_pass = (start_ms - self.origin_ms) // loop
        at = self.origin_ms + first_pass * loop
        while at < end_ms:
            for track in self.tracks:
                for segment in track.segments:
                    if at + segment.duration_ms > start_ms and at < end_ms:
                        yield Sounding(segment.chunk_id, track.request_id, at, segment.duration_ms)
                    at += segment.duration_ms

    def fade_at(self, t_ms: int) -> float:
        """Its fade gain at t_ms: 0 before it starts or after it ends, ramps in between."""
        gain = _ramp(t_ms, self.fades_in_at_ms, self.fade_in_ms, 0.0, 1.0)
        if self.fades_out_at_ms is not None:
            gain *= _ramp(t_ms, self.fades_out_at_ms, self.fade_out_ms, 1.0, 0.0)
        return gain

    def shifted(self, paused_at_ms: int, resumes_at_ms: int) -> "Bed":
        """As a pause from paused_at_ms to resumes_at_ms leaves it: a bed still to be heard after the
        pause moves later by its length (origin, fades and all), and one the pause cut is heard again
        from the resume."""
        shift = resumes_at_ms - paused_at_ms
        if shift <= 0 or (self.ends_at_ms is not None and self.ends_at_ms <= paused_at_ms):
            return self
        cut = self.sounds_from_ms < paused_at_ms
        return replace(
            self,
            origin_ms=self.origin_ms + shift,
            fades_in_at_ms=self.fades_in_at_ms + shift,
            fades_out_at_ms=None if self.fades_out_at_ms is None else self.fades_out_at_ms + shift,
            heard_from_ms=resumes_at_ms
            if cut
            else (None if self.heard_from_ms is None else self.heard_from_ms + shift),
        )


SCALARS = tuple(f.name for f in fields(Bed) if f.name != "tracks")


def scalars(bed: Bed) -> dict:
    """Everything of a bed but its tracks, by field name: what storage and the wire carry as is."""
    return {name: getattr(bed, name) for name in SCALARS}


def bed_from(record: dict, tracks: tuple[BedTrack, ...]) -> Bed:
    """A bed from `scalars` (and maybe more keys, which are passed over) and its tracks."""
    return Bed(tracks=tracks, **{name: record[name] for name in SCALARS})


def _ramp(t_ms: int, at_ms: int, length_ms: int, before: float, after: float) -> float:
    if t_ms <= at_ms:
        return before
    if length_ms <= 0 or t_ms >= at_ms + length_ms:
        return after
    return before + (after - before) * (t_ms - at_ms) / length_ms


def speech_of(requests: Iterable[Request], since_ms: int) -> list[tuple[int, int]]:
    """When narration sounds: (start, end) of every placed speech chunk still heard after `since_ms`
    (what the ducking follows; music on the line does not duck the bed)."""
    return [
        (chunk.starts_at_ms, chunk.ends_at_ms)
        for request in requests
        if request.kind == "speech"
        for chunk in request.chunks
        if chunk.scheduled and chunk.state != ChunkState.DISCARDED and chunk.ends_at_ms > since_ms
    ]


def duck_envelope(speech: Iterable[tuple[int, int]], duck_db: float) -> list[tuple[int, float]]:
    """Where the ducking gain turns, as (ms, gain) points, linear between them and 1 outside: down to
    `duck_db` by the time each voice starts, held through it and HOLD_MS after, then back up over
    RELEASE_MS. Voices close enough that the bed would not be back up in between share one dip."""
    level = 10 ** (duck_db / 20)
    spans: list[list[int]] = []
    for start, end in sorted(speech):
        down, up = start - ATTACK_MS, end + HOLD_MS
        if spans and down <= spans[-1][1] + RELEASE_MS:
            spans[-1][1] = max(spans[-1][1], up)
        else:
            spans.append([down, up])
    points: list[tuple[int, float]] = []
    for down, up in spans:
        points += [(down, 1.0), (down + ATTACK_MS, level), (up, level), (up + RELEASE_MS, 1.0)]
    return points


def gain_at(points: list[tuple[int, float]], t_ms: float) -> float:
    """The envelope `points` at t_ms."""
    times = [at for at, _ in points]
    i = bisect.bisect_right(times, t_ms)
    if i == 0 or i == len(points):
        return 1.0 if i == 0 or not points else points[-1][1]
    (t0, g0), (t1, g1) = points[i - 1], points[i]
    return g0 if t1 == t0 else g0 + (g1 - g0) * (t_ms - t0) / (t1 - t0)
