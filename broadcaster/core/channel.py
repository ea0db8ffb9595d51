"""One channel's line of requests and its clock-driven timeline.

Theory of operation
-------------------
The channel owns a *line*: the requests not yet played or failed, in the order
they were submitted. Audio is produced for them in that order by an outside
worker, which reports each finished chunk with `chunk_made`, and which starts
on a request only while less than `generate_ahead_ms` of audio before it is
made and not yet played (`next_job`). The timeline is the sequence of chunk
start times; it only ever grows at its end (the cursor).

* A chunk of the request already on the air is placed as soon as it is ready,
  right after the previous chunk plus the sentence gap, but never less than the
  lead ahead of now. If it was late, the timeline slips by the difference and a
  `TimelineShifted` says so: audio never overlaps and nothing is skipped.
* The next request's first chunk is placed only once the cursor is within the
  lead of now (the request gap included): that is the moment it goes on the
  air, so `StreamStarted` reaches listeners roughly `lead_ms` before it sounds.
  The lead is the config's floor, or more when the audience reports needing
  more time to fetch (`Channel.lead_ms`, set by the runtime; see lead.py).
* `tick(now)` retires chunks whose end has passed, finishes requests whose last
  chunk has ended (auto-advance needs nothing more: the next request is already
  placed), fails requests whose generation ran past the timeout, and places
  whatever has become due. `next_deadline_ms()` says when the next tick is due.
* A request whose audio is still being made goes on the air only if `may_stream`
  allows it (the station asks whether the shared engine can keep up with one
  more); otherwise it waits until its last chunk is ready, so a busy engine
  delays starts instead of making audio already on the air run dry.

* A bed (core/bed.py) loops under the line: `set_bed` starts one a lead ahead,
  crossfading with the one before, which fades out and is forgotten once it
  has; `stop_bed` fades it out. A pause moves beds as it moves chunks.
* Talk-over: narration submitted with `over` while a track is on the air goes
  to the *overlay*, not the line: its chunks are placed on a cursor of their
  own from a lead ahead, over the track, which ducks under them (core/bed.py's
  envelope, TALK_OVER_DUCK_DB). Overlay requests are made before anything in
  line and play one after another. With no track on the air, `over` means
  nothing: the narration queues as any other.
* `pause(now)` stops everything a lead ahead (`paused_at_ms`), so every listener
  stops on the same sample. From then on nothing new goes on the air at or
  after that moment, nothing ending after it is retired, and no generation
  timeout runs. `resume(now)` moves every chunk that had not ended by the pause
  later by the time it lasted (a lead ahead of the resume): the chunk cut by
  the pause goes on from where it stopped, and the gaps stay as they were.
* An open narration (core/writing.py) takes more sentences while it is on the
  air (`append`); it is over only once closed and played, so the queue waits for
  it. Run dry, it waits in silence and its next sentence slips the timeline as
  any late chunk does. Idle, its unfinished sentence is spoken and later it is
  closed, on the clock like the generation timeout.

Listener acknowledgements play no part here: the clock alone drives playback.
"""

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from random import Random

from .bed import HOLD_MS, RELEASE_MS, Bed, speech_of
from .events import (
    BedChanged,
    ChannelPaused,
    ChannelResumed,
    ChunkScheduled,
    Event,
    QueueChanged,
    RequestCancelled,
    RequestClosed,
    RequestFailed,
    RequestPlaced,
    RequestPlayed,
    StreamStarted,
    TimelineShifted,
)
from .model import Chunk, RepeatMode, Request
from .states import FINAL_REQUEST_STATES, ChunkEvent, ChunkState, RequestEvent, RequestState
from .timeline import Position, TimelineConfig, place_chunk, position_at
from .writing import appended, close, close_due_ms, flush, flush_due_ms

RECENT_LIMIT = 32


class Channel:
    def __init__(self, name: str, config: TimelineConfig):
        self.name = name
        self.config = config
        self.line: list[Request] = []
        self.overlay: list[Request] = []  # talk-over narration, placed over the track on the air
        self.recent: deque[Request] = deque(maxlen=RECENT_LIMIT)
        self._played_end_ms: int | None = None
        self.dirty: set[str] = set()  # request ids whose state the adapter must persist
        self.repeat = RepeatMode.OFF
        self.may_stream: Callable[[Request], bool] = lambda request: True
        # How far ahead of now audio goes on the air: the config's, or what the runtime measured its
        # audience needs (core/lead.py), set before each step.
        self.lead_ms = config.lead_ms
        self.paused_at_ms: int | None = None  # set: everything stops at this moment until a resume
        self.pause_dirty = False  # the adapter must persist paused_at_ms
        self._last_pause: tuple[int, int] | None = None  # (paused at, resumed at) of the latest pause
        self.bed: Bed | None = None  # what loops under the line
        self.fading_beds: tuple[Bed, ...] = ()  # beds replaced or stopped, until their fade is over
        self.bed_dirty = False  # the adapter must persist the beds
        # The line's order changed other than at its end (a producer's item before the auto-DJ's, a move,
        # a shuffle, a repeat, "up next"): the adapter must persist it, or a restart loses it.
        self.order_dirty = False
        self.working_on: str | None = None  # the request the generation worker last (re)started

    # -- producers and the generation worker ---------------------------------

    def submit(self, request: Request, now_ms: int) -> list[Event]:
        """Queue a request; a producer's request goes before any auto-DJ track not yet on the air.
        Talk-over narration goes over the track on the air if there is one, else in line as any other."""
        if request.over and request.kind == "speech" and self._track_on_air(now_ms):
            self.overlay.append(request)
            self.dirty.add(request.request_id)
            return [QueueChanged(), *self._place(now_ms)]
        request.over = False
        at = len(self.line)
        if not request.auto:
            at = next((i for i in range(self.movable_from(), len(self.line)) if self.line[i].auto), at)
        self._insert(at, request)
        self.dirty.add(request.request_id)
        return [QueueChanged(), *self._place(now_ms)]

    # -- queue controls ----------------------------------------------------------

    def movable_from(self) -> int:
        """Index of the first request in line with nothing placed yet: from there on the order may change."""
        for i, request in enumerate(self.line):
            if not request.chunks or not request.chunks[0].scheduled:
                return i
        return len(self.line)

    def move(self, request_id: str, position: int, now_ms: int) -> list[Event]:
        """Move a request that is not on the air yet to `position` in the line."""
        request = self._in_line(request_id)
        if request in self.overlay:
            raise ValueError(f"request {request_id} is talk-over, on the air over the track; it cannot be moved")
        first = self.movable_from()
        if self.line.index(request) < first:
            raise ValueError(f"request {request_id} is already on the air; it cannot be moved")
        if not first <= position < len(self.line):
            raise ValueError(f"expected a position from {first} to {len(self.line) - 1}, got {str(position)[:40]}")
        self.line.remove(request)
        self.line.insert(position, request)
        self.order_dirty = True
        return [QueueChanged(), *self._place(now_ms)]

    def shuffle(self, rng: Random, now_ms: int) -> list[Event]:
        """Shuffle everything not yet on the air."""
        first = self.movable_from()
        rest = self.line[first:]
        rng.shuffle(rest)
        self.line[first:] = rest
        self.order_dirty = True
        return [QueueChanged(), *self._place(now_ms)]

    def set_repeat(self, mode: RepeatMode) -> list[Event]:
        self.repeat = mode
        return [QueueChanged()]

    def insert_repeat(self, original: Request, copy: Request, now_ms: int) -> list[Event]:
        """Queue `copy` of a request that went on the air: right after it (repeat one) or last (repeat all)."""
        at = len(self.line)
        if self.repeat == RepeatMode.ONE and original in self.line:
            # never before a request already on the timeline (placed within the lead, after the original)
            at = max(self.line.index(original) + 1, self.movable_from())
        self._insert(at, copy)
        self.dirty.add(copy.request_id)
        return [QueueChanged(), *self._place(now_ms)]

    def insert_before(self, request: Request, anchor: Request, now_ms: int) -> list[Event]:
        """Queue `request` right before `anchor` if the anchor is still waiting; otherwise last."""
        at = len(self.line)
        if anchor in self.line[self.movable_from() :]:
            at = self.line.index(anchor)
        self._insert(at, request)
        self.dirty.add(request.request_id)
        return [QueueChanged(), *self._place(now_ms)]

    def _insert(self, at: int, request: Request) -> None:
        self.order_dirty |= at < len(self.line)
        self.line.insert(at, request)

    def needs_filler(self) -> bool:
        """True when nothing is waiting to go on the air: the moment for the auto-DJ to add a track."""
        return self.movable_from() == len(self.line)

    def next_job(self) -> Request | None:
        """The request that needs audio first: talk-over narration, else the first in line. One in line
        whose audio has not begun waits while the requests before it have `generate_ahead_ms` of audio
        made and not yet played: a long queue is made as its turn nears, not all at once."""
        overlay = next((r for r in self.overlay if r.has_work), None)
        if overlay is not None:
            return overlay
        ahead_ms = 0
        for request in self.line:
            if request.has_work:
                return request if request.chunks or ahead_ms < self.config.generate_ahead_ms else None
            ahead_ms += sum(c.duration_ms for c in request.chunks if c.state == ChunkState.READY)
        return None

    def _track_on_air(self, now_ms: int) -> bool:
        """A track is sounding, or goes on the air within the lead (placed already, after the head)."""
        for request in self.line[: self.movable_from()]:
            if request.kind == "track" and request.chunks[0].starts_at_ms <= now_ms + self.lead_ms:
                if request.scheduled_end_ms() > self._horizon(now_ms):
                    return True
        return False

    def next_chunk_due_ms(self, request: Request) -> int | None:
        """When the request's next chunk must be ready to start on time, if it is on the air
        (later than this, the timeline slips); None while nothing is waiting for it."""
        if not request.chunks or not request.chunks[0].scheduled or not request.chunks[-1].scheduled:
            return None
        gap = 0 if request.kind == "track" else self.config.sentence_gap_ms
        return request.chunks[-1].ends_at_ms + gap - self.lead_ms // 2

    def streaming(self) -> list[Request]:
        """Requests on the air whose audio is still being made."""
        return [r for r in self.line if not r.generated and r.chunks and r.chunks[0].scheduled]

    def generation_started(self, request_id: str, now_ms: int) -> list[Event]:
        request = self._in_line(request_id)
        if request.state == RequestState.PENDING:
            request.apply(RequestEvent.START)
        request.generation_started_ms = now_ms
        self.working_on = request_id
        self.dirty.add(request_id)
        return [QueueChanged(progress=True)]

    def chunk_made(self, chunk: Chunk, now_ms: int) -> list[Event]:
        """The worker's finished chunk, kept if its request still waits for that sentence, even when
        other work took the worker meanwhile (talk-over, a move): made once, it need not be made again.
        Dropped if the request failed, was cancelled or left the line while it was being made."""
        request = next((r for r in (*self.line, *self.overlay) if r.request_id == chunk.request_id), None)
        if request is None or request.state in FINAL_REQUEST_STATES or chunk.seq != request.next_seq:
            return []
        return self.chunk_ready(chunk, now_ms)

    def chunk_ready(self, chunk: Chunk, now_ms: int) -> list[Event]:
        request = self._in_line(chunk.request_id)
        if chunk.seq != request.next_seq:
            raise ValueError(f"expected chunk seq {request.next_seq} of {request.request_id}, got {chunk.seq}")
        request.chunks.append(chunk)
        self.dirty.add(request.request_id)
        return self._place(now_ms) or [QueueChanged(progress=True)]  # generated ahead

    def append(
        self,
        request_id: str,
        text: str,
        sentences: list[str],
        tail: tuple[str, list[str]],
        final: bool,
        now_ms: int,
    ) -> list[Event]:
        """More text for an open narration: its complete `sentences` and its unfinished `tail` (the text
        and what it says if spoken as it is); `final` closes it."""
        request = self._in_line(request_id)
        if request.writing is None:
            raise ValueError(f"request {request_id} is closed; it takes no more text")
        appended(request, text, sentences, *tail, now_ms)
        if request.state == RequestState.GENERATING:
            request.generation_started_ms = now_ms  # open: the timeout counts from the latest append
        self.dirty.add(request_id)
        if final:
            return self._close(request, now_ms)
        return [QueueChanged(), *self._place(now_ms)]

    def _close(self, request: Request, now_ms: int) -> list[Event]:
        close(request)
        self.dirty.add(request.request_id)
        if not request.sentences:
            return self._end_empty(request, now_ms)
        events: list[Event] = [RequestClosed(request), QueueChanged()]
        last = request.chunks[-1] if request.chunks else None
        if request.generated and last is not None and last.scheduled:
            events.append(RequestPlaced(request))  # its last chunk went on the air while it was open
        return [*events, *self._retire(request, self._horizon(now_ms)), *self._place(now_ms)]

    def _end_empty(self, request: Request, now_ms: int) -> list[Event]:
        request.apply(RequestEvent.CANCEL)
        request.error = "closed with nothing to speak"
        request.finished_at_ms = self._horizon(now_ms)
        self._leave_line(request)
        return [RequestCancelled(request, False, request.finished_at_ms, ()), QueueChanged(), *self._place(now_ms)]

    def _idle(self, request: Request, now_ms: int) -> list[Event]:
        """An open narration left without text: close it, or speak its unfinished sentence."""
        if (due := close_due_ms(request, self.config)) is not None and now_ms >= due:
            return self._close(request, now_ms)
        if (due := flush_due_ms(request, self.config)) is not None and now_ms >= due and flush(request):
            self.dirty.add(request.request_id)
            return [QueueChanged()]
        return []

    def generation_failed(self, request_id: str, reason: str, now_ms: int) -> list[Event]:
        request = self.find_request(request_id)
        if request is None or request.state not in (RequestState.PENDING, RequestState.GENERATING):
            return []
        return [*self._fail(request, reason, now_ms), *self._place(now_ms)]

    def cancel(self, request_id: str, now_ms: int) -> list[Event]:
        """Cancel a queued request, or skip the one on the air: its audio stops now."""
        request = self._in_line(request_id)
        cancelled = self._cancel(request, now_ms)
        events: list[Event] = [cancelled]
        if cancelled.skipped:  # skipping under "repeat" moves on instead of replaying what was skipped
            for copy in [r for r in self.line if r.repeat_of == request_id]:  # placed within the lead too
                events.append(self._cancel(copy, now_ms))
        return [*events, QueueChanged(), *self._place(now_ms)]

    def _cancel(self, request: Request, now_ms: int) -> RequestCancelled:
        now_ms = self._horizon(now_ms)  # paused: the audio stopped at the pause already
        request.apply(RequestEvent.CANCEL)
        on_air = any(c.scheduled for c in request.live_chunks())
        cut = any(c.scheduled and c.starts_at_ms <= now_ms for c in request.live_chunks())
        discarded = []
        for chunk in request.chunks:
            if chunk.state != ChunkState.READY:
                continue
            if chunk.scheduled and chunk.ends_at_ms <= now_ms:  # heard to its end before the tick retired it
                chunk.apply(ChunkEvent.PLAY_OUT)
                continue
            chunk.apply(ChunkEvent.DISCARD)
            discarded.append(chunk.chunk_id)
        request.error = "skipped by the producer" if on_air else "cancelled by the producer"
        request.finished_at_ms = now_ms
        if cut and request not in self.overlay:
            self._played_end_ms = max(self._played_end_ms or 0, now_ms)
        self._leave_line(request)
        return RequestCancelled(request, on_air, now_ms, tuple(discarded))

    # -- the bed ---------------------------------------------------------------

    def set_bed(self, bed: Bed, now_ms: int) -> list[Event]:
        """Start `bed` (its origin and fade-in are set here) a lead from now, or at the pause's moment
        while paused; the bed before it fades out over the new one's fade-in: a scene change."""
        at = self._bed_moment(now_ms)
        if self.bed is not None:
            self.fading_beds = self._fading_after(self.bed, at, bed.fade_in_ms, now_ms)
        self.bed = replace(bed, origin_ms=at, fades_in_at_ms=at)
        self.bed_dirty = True
        return [BedChanged(self.bed, self.fading_beds)]

    def stop_bed(self, fade_ms: int, now_ms: int) -> list[Event]:
        if self.bed is None:
            raise ValueError(f"channel {self.name} has no bed to stop")
        at = self._bed_moment(now_ms)
        self.fading_beds = self._fading_after(self.bed, at, fade_ms, now_ms)
        # One that had not begun to sound (stopped while paused, or within a lead) ends there, unheard.
        stopped = self.bed.fading_out(at, fade_ms if at > self.bed.sounds_from_ms else 0)
        self.bed = None
        self.bed_dirty = True
        return [BedChanged(None, self.fading_beds, stopped)]

    def speech(self, now_ms: int) -> list[tuple[int, int]]:
        """The narration the ducking follows from now on (and what it is still coming back up from)."""
        return speech_of((*self.recent, *self.line, *self.overlay), self._horizon(now_ms) - HOLD_MS - RELEASE_MS)

    def talk_over(self, now_ms: int) -> list[tuple[int, int]]:
        """The talk-over narration the track on the air ducks under."""
        since = self._horizon(now_ms) - HOLD_MS - RELEASE_MS
        return speech_of((r for r in (*self.recent, *self.overlay) if r.over), since)

    def _bed_moment(self, now_ms: int) -> int:
        at = now_ms + self.lead_ms
        return at if self.paused_at_ms is None else min(at, self.paused_at_ms)

    def _fading_after(self, gone: Bed, at_ms: int, fade_ms: int, now_ms: int) -> tuple[Bed, ...]:
        """The beds fading out once `gone` goes at `at_ms`. One that goes before it would sound (a scene
        changed again while paused, or within a lead) is dropped rather than faded: nobody heard it,
        and beds replaced during a long pause must not pile up, each with its audio kept."""
        still = self._still_fading(now_ms)
        return still if at_ms <= gone.sounds_from_ms else (*still, gone.fading_out(at_ms, fade_ms))

    def _still_fading(self, now_ms: int) -> tuple[Bed, ...]:
        return tuple(b for b in self.fading_beds if b.ends_at_ms is None or b.ends_at_ms > self._horizon(now_ms))

    # -- pause -----------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self.paused_at_ms is not None

    def pause(self, now_ms: int) -> list[Event]:
        """Stop everything a lead from now, for every listener at once."""
        if self.paused:
            raise ValueError(f"channel {self.name} is already paused")
        self.paused_at_ms = now_ms + self.lead_ms
        self.pause_dirty = True
        return [ChannelPaused(self.paused_at_ms)]

    def resume(self, now_ms: int) -> list[Event]:
        """Go on a lead from now; or, if the pause is still at least half a lead away (listeners have
        time to hear that it is off), at the pause's own moment: nothing stops, nothing moves."""
        if self.paused_at_ms is None:
            raise ValueError(f"channel {self.name} is not paused")
        paused_at, self.paused_at_ms = self.paused_at_ms, None
        called_off = paused_at - now_ms >= self.lead_ms // 2
        at = paused_at if called_off else max(now_ms + self.lead_ms, paused_at)
        self.pause_dirty = True
        self._last_pause = (paused_at, at)
        events: list[Event] = [ChannelResumed(paused_at, at)]
        if at > paused_at:
            self._shift_after(paused_at, at - paused_at)
            if self.bed is not None or self.fading_beds:
                self.bed = None if self.bed is None else self.bed.shifted(paused_at, at)
                self.fading_beds = tuple(b.shifted(paused_at, at) for b in self._still_fading(paused_at))
                self.bed_dirty = True
                events.append(BedChanged(self.bed, self.fading_beds))
        return [*events, *self._place(now_ms)]

    def _shift_after(self, paused_at: int, shift_ms: int) -> None:
        """Everything that had not ended by `paused_at` moves `shift_ms` later; what was cut goes on."""
        for request in (*self.line, *self.overlay, *self.recent):
            moved = False
            for chunk in request.chunks:
                if chunk.scheduled and chunk.ends_at_ms > paused_at:
                    if chunk.starts_at_ms < paused_at:
                        chunk.from_ms = paused_at + shift_ms  # cut: it goes on from here, not from its start
                    chunk.starts_at_ms += shift_ms
                    moved = True
            if request.finished_at_ms is not None and request.finished_at_ms > paused_at:
                request.finished_at_ms += shift_ms
                moved = True
            if self._timing_out(request):
                request.generation_started_ms += shift_ms  # the timeout did not run while paused
                moved = True
            if moved:
                self.dirty.add(request.request_id)
        if self._played_end_ms is not None and self._played_end_ms > paused_at:
            self._played_end_ms += shift_ms

    def _horizon(self, now_ms: int) -> int:
        """How far the timeline has gone by `now_ms`: it stands still at the pause."""
        return now_ms if self.paused_at_ms is None else min(now_ms, self.paused_at_ms)

    # -- the clock -------------------------------------------------------------

    def tick(self, now_ms: int) -> list[Event]:
        if self.fading_beds and (kept := self._still_fading(now_ms)) != self.fading_beds:
            self.fading_beds, self.bed_dirty = kept, True  # faded out: nothing more to hear of them
        events: list[Event] = []
        for request in [*self.overlay, *self.line]:
            events += self._idle(request, now_ms)
            events += self._retire(request, self._horizon(now_ms))
            events += self._check_timeout(request, now_ms)
        return events + self._place(now_ms)

    def next_deadline_ms(self) -> int | None:
        return min(self._deadlines(), default=None)

    def _deadlines(self) -> Iterator[int]:
        horizon = self.paused_at_ms  # paused: only what ends before the pause still happens
        for request in (*self.overlay, *self.line):
            ends = [c.ends_at_ms for c in request.chunks if c.state == ChunkState.READY and c.scheduled]
            ends = [end for end in ends if horizon is None or end <= horizon]
            if ends:
                yield min(ends)  # type: ignore[type-var]
            if self._timing_out(request):
                yield request.generation_started_ms + self.config.generation_timeout_ms  # type: ignore[operator]
            for due in (flush_due_ms(request, self.config), close_due_ms(request, self.config)):
                if due is not None:
                    yield due
        for bed in self.fading_beds:  # forgotten once faded out
            if bed.ends_at_ms is not None and (horizon is None or bed.ends_at_ms <= horizon):
                yield bed.ends_at_ms
        if self.paused:
            return
        waiting = self._first_unplaced_request()
        cursor = self._next_request_cursor()
        if waiting is not None and waiting.chunks and cursor is not None and self._placeable(waiting):
            yield cursor + self.config.request_gap_ms - self.lead_ms

    def _placeable(self, request: Request) -> bool:
        """Whether `_place` would put this request on the air once it is due. A deadline for one it
        would not (a request before it still needs audio, or it is held) would make the clock spin."""
        before = self.line[: self.line.index(request)]
        ready = all(r.generated for r in before) and (request.generated or self.may_stream(request))
        return ready and not self._talk_over_unplaced()

    def _timing_out(self, request: Request) -> bool:
        """Only the request the worker is on runs against the generation timeout: one pushed aside
        (a producer's request put before a half-made auto-DJ track) waits without it, and its clock
        restarts when the worker comes back to it (`generation_started`): until then, though it is the next
        job again, its clock is the one from before it was pushed aside."""
        running = request.state == RequestState.GENERATING and not request.generated and request is self.next_job()
        return running and request.request_id == self.working_on and not self.paused

    # -- what listeners see ----------------------------------------------------

    def now_playing(self) -> Request | None:
        """The head of the line once its audio is under way (it may still be in its lead)."""
        if self.line and self.line[0].state == RequestState.GENERATING:
            return self.line[0]
        return None

    def upcoming(self) -> list[Request]:
        head = self.now_playing()
        return [r for r in self.line if r is not head]

    def position(self, now_ms: int) -> Position | None:
        head = self.now_playing()
        return position_at(head.live_chunks(), self._horizon(now_ms)) if head else None

    def line_position(self, request_id: str) -> int:
        """Its place in line (0: on the air next or now); talk-over is always on the air: 0."""
        return next((i for i, r in enumerate(self.line) if r.request_id == request_id), 0)

    def find_request(self, request_id: str) -> Request | None:
        for request in (*self.line, *self.overlay, *self.recent):
            if request.request_id == request_id:
                return request
        return None

    def find_chunk(self, chunk_id: str) -> Chunk | None:
        for request in (*self.line, *self.overlay, *self.recent):
            for chunk in request.chunks:
                if chunk.chunk_id == chunk_id:
                    return chunk
        return None

    def placed_chunk(self, chunk_id: str) -> Chunk | None:
        """A chunk on the timeline now or lately: of the requests just finished, over the track, or in
        line up to the first not yet placed. What listeners acknowledge; cheap however long the line."""
        placed = itertools.takewhile(lambda r: r.starts_at_ms is not None, self.line)
        for request in (*self.recent, *self.overlay, *placed):
            for chunk in request.chunks:
                if chunk.chunk_id == chunk_id:
                    return chunk
        return None

    def forget(self, request_ids: set[str]) -> None:
        """Drop purged requests from the recent history."""
        kept = [r for r in self.recent if r.request_id not in request_ids]
        self.recent.clear()
        self.recent.extend(kept)

    # -- restart ---------------------------------------------------------------

    def restore(
        self,
        requests: list[Request],
        played_end_ms: int | None,
        now_ms: int,
        paused_at_ms: int | None = None,
        recent: Iterable[Request] = (),
    ) -> list[Event]:
        """Reload the line after a restart (paused, if it was), with the `recent` history (the oldest
        first); generation resumes and its timeout restarts now."""
        self.recent.clear()
        self.recent.extend(recent)
        self.line = [r for r in requests if not r.over]
        self.overlay = [r for r in requests if r.over]
        self._played_end_ms = played_end_ms
        self.paused_at_ms = paused_at_ms
        for request in (*self.overlay, *self.line):
            if request.state == RequestState.GENERATING and not request.generated:
                request.generation_started_ms = now_ms
            if request.writing is not None:
                request.writing.appended_at_ms = now_ms  # its producer gets the idle times again
        return self.tick(now_ms)

    # -- internals -------------------------------------------------------------

    def _in_line(self, request_id: str) -> Request:
        for request in (*self.line, *self.overlay):
            if request.request_id == request_id:
                return request
        raise KeyError(f"request {request_id} is not in the line of channel {self.name}")

    def _cursor_ms(self) -> int | None:
        ends = [e for r in self.line if (e := r.scheduled_end_ms()) is not None]
        if self._played_end_ms is not None:
            ends.append(self._played_end_ms)
        return max(ends, default=None)

    def _next_request_cursor(self) -> int | None:
        """Where the next request in line may start after: the line's cursor, or the end of talk-over still
        sounding past it (spoken over a track that has ended since: the line waits for it)."""
        cursor = self._cursor_across_pause(self.config.request_gap_ms)
        ends = [e for r in self.overlay if (e := r.scheduled_end_ms()) is not None]
        return max([cursor, *ends]) if cursor is not None and ends else cursor

    def _talk_over_unplaced(self) -> bool:
        """Talk-over with audio still to come: how far it reaches is not known, so the line's next request
        waits (it goes on the air a lead ahead of its start, by which time the talk-over is placed)."""
        return any(not r.generated or any(not c.scheduled for c in r.chunks) for r in self.overlay)

    def _cursor_across_pause(self, gap_ms: int) -> int | None:
        """The cursor, moved by the latest pause when the gap after it spanned the pause's moment: a
        gap the pause cut goes on after it, like the audio (a pause is no underrun)."""
        cursor = self._cursor_ms()
        if cursor is not None and self._last_pause is not None:
            paused_at, resumed_at = self._last_pause
            if cursor <= paused_at < cursor + gap_ms:
                return cursor + resumed_at - paused_at
        return cursor

    def _first_unplaced_request(self) -> Request | None:
        for request in self.line:
            if not request.chunks or not request.chunks[0].scheduled:
                return request
        return None

    def _place(self, now_ms: int) -> list[Event]:
        return self._place_in(self.line, self._place_chunk, now_ms) + self._place_in(
            self.overlay, self._place_over, now_ms
        )

    def _place_in(
        self, requests: list[Request], place: Callable[[Request, Chunk, int], list[Event] | None], now_ms: int
    ) -> list[Event]:
        """Every ready chunk of these requests, in order, until one cannot go on the air yet; a request
        whose audio is still being made holds back the ones after it."""
        events: list[Event] = []
        for request in requests:
            for chunk in request.chunks:
                if chunk.scheduled or chunk.state != ChunkState.READY:
                    continue
                placed = place(request, chunk, now_ms)
                if placed is None:
                    return events
                events += placed
                if request.generated and chunk is request.chunks[-1]:
                    events.append(RequestPlaced(request))
            if not request.generated:
                break  # later requests wait for this one's audio
        return events

    def _place_over(self, request: Request, chunk: Chunk, now_ms: int) -> list[Event] | None:
        """A talk-over chunk, as soon as it is ready: on the overlay's own cursor, a lead from now at first."""
        first = chunk.seq == 0
        if first and not request.generated and not self.may_stream(request):
            return None
        ends = [e for r in self.overlay if (e := r.scheduled_end_ms()) is not None]
        gap = self.config.request_gap_ms if first else self.config.sentence_gap_ms
        return self._put_on_air(request, chunk, max(ends) if ends else None, gap, now_ms)

    def _place_chunk(self, request: Request, chunk: Chunk, now_ms: int) -> list[Event] | None:
        cfg = self.config
        first = chunk.seq == 0
        # A track's segments are one continuous piece of music: no pause between them.
        gap = cfg.request_gap_ms if first else (0 if request.kind == "track" else cfg.sentence_gap_ms)
        cursor = self._next_request_cursor() if first else self._cursor_across_pause(gap)
        if first and cursor is not None and now_ms + self.lead_ms < cursor + gap:
            return None  # the request before (or talk-over past its end) is still playing: not on the air yet
        if first and cursor is not None and self._talk_over_unplaced():
            return None  # talk-over still being made may reach past the line's end: wait for all of it
        if first and not request.generated and not self.may_stream(request):
            return None  # the engine is too busy to make the rest in time: wait for all of it
        return self._put_on_air(request, chunk, cursor, gap, now_ms)

    def _put_on_air(
        self, request: Request, chunk: Chunk, cursor: int | None, gap: int, now_ms: int
    ) -> list[Event] | None:
        """Place the chunk after `cursor` and the gap, or a lead from now if it is late; None while paused."""
        start, slip = place_chunk(cursor, gap, now_ms, self.lead_ms)
        if self.paused_at_ms is not None and start >= self.paused_at_ms:
            return None  # nothing new goes on the air once paused
        chunk.starts_at_ms = start
        self.dirty.add(request.request_id)
        first = chunk.seq == 0
        events: list[Event] = [StreamStarted(request)] if first else []
        events.append(ChunkScheduled(request, chunk))
        if slip and not first:  # a late first chunk moves nothing already announced
            events.append(TimelineShifted(request, chunk, slip))
        return events

    def _retire(self, request: Request, now_ms: int) -> list[Event]:
        for chunk in request.chunks:
            if chunk.state == ChunkState.READY and chunk.scheduled and chunk.ends_at_ms <= now_ms:
                chunk.apply(ChunkEvent.PLAY_OUT)
                self.dirty.add(request.request_id)
        done = request.generated and all(c.state != ChunkState.READY for c in request.chunks)
        if not done or request.state != RequestState.GENERATING:
            return []
        request.apply(RequestEvent.FINISH)
        request.finished_at_ms = request.scheduled_end_ms()
        # Talk-over over a track leaves the line's cursor where the track put it; one that outlasted its
        # track moves it on, so the next request keeps its gap after it (as a restart's cursor does).
        self._played_end_ms = max(self._played_end_ms or 0, request.finished_at_ms or 0)
        self._leave_line(request)
        return [RequestPlayed(request), QueueChanged()]

    def _check_timeout(self, request: Request, now_ms: int) -> list[Event]:
        if not self._timing_out(request):
            return []
        deadline = request.generation_started_ms + self.config.generation_timeout_ms
        if now_ms < deadline:
            return []
        seconds = self.config.generation_timeout_ms / 1000
        return self._fail(request, f"generation timed out after {seconds:g} s", now_ms)

    def _fail(self, request: Request, reason: str, now_ms: int) -> list[Event]:
        """Fail a request: a chunk already sounding plays out, later ones are discarded."""
        now_ms = self._horizon(now_ms)
        request.apply(RequestEvent.FAIL)
        request.error = reason
        discarded = []
        for chunk in request.chunks:
            if chunk.state != ChunkState.READY:
                continue
            sounding = chunk.scheduled and chunk.starts_at_ms <= now_ms
            chunk.apply(ChunkEvent.PLAY_OUT if sounding else ChunkEvent.DISCARD)
            if not sounding:
                discarded.append(chunk)
        # The request is over once what was already heard has finished: later audio goes after that.
        request.finished_at_ms = max(now_ms, request.scheduled_end_ms() or now_ms)
        if request not in self.overlay:
            self._played_end_ms = max(self._played_end_ms or 0, request.finished_at_ms)
        self._leave_line(request)
        return [RequestFailed(request, reason, now_ms, tuple(c.chunk_id for c in discarded)), QueueChanged()]

    def _leave_line(self, request: Request) -> None:
        (self.overlay if request in self.overlay else self.line).remove(request)
        self.recent.append(request)
        self.dirty.add(request.request_id)
