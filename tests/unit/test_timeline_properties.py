"""Properties of the timeline arithmetic, and of one channel driven by a stepped clock.

`Sim` plays the part of the runtime (broadcaster/runtime/runner.py) around a real
`Channel`: one generation worker making chunks strictly in line order, a clock
task that ticks exactly at `next_deadline_ms()`, and, at arbitrary moments,
submissions, extra ticks, cancels, engine failures and stalls. Time is a plain
integer that only moves forward. Every step's events and the channel's state
are checked against the rules of docs/state-machine.md ("Timeline rules").
"""

from dataclasses import dataclass
from itertools import count

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from broadcaster.core.channel import Channel  # noqa: E402
from broadcaster.core.events import (  # noqa: E402
    ChunkScheduled,
    Event,
    RequestCancelled,
    RequestFailed,
    RequestPlayed,
    StreamStarted,
    TimelineShifted,
)
from broadcaster.core.model import Chunk, Request  # noqa: E402
from broadcaster.core.states import FINAL_REQUEST_STATES, ChunkState, RequestState  # noqa: E402
from broadcaster.core.timeline import TimelineConfig, place_chunk, position_at  # noqa: E402

TIMEOUT_MS = 60_000  # longer than any healthy request takes to generate below
MAX_STEPS = 5_000
SETTINGS = settings(max_examples=150, deadline=None)
_ids = count(1)


# -- place_chunk ------------------------------------------------------------------

times = st.integers(min_value=0, max_value=10**12)
leads = st.integers(min_value=0, max_value=10_000)
gaps = st.integers(min_value=0, max_value=5_000)


@SETTINGS
@given(gaps, times, leads)
def test_with_nothing_before_a_chunk_starts_one_lead_after_now(gap, now, lead):
    """place_chunk with no cursor starts the chunk at now + lead and reports no slip."""
    assert place_chunk(None, gap, now, lead) == (now + lead, 0)


@SETTINGS
@given(times, gaps, st.integers(min_value=-(10**6), max_value=10**6), leads)
def test_placed_chunk_is_never_early_never_in_the_past_and_slips_only_on_underrun(cursor, gap, ahead, lead):
    """start >= due, start >= now + lead//2, slip == start - due, and a slip is always more than half the lead."""
    due = cursor + gap
    now = max(0, due - ahead)  # `ahead`: how long before it is due the chunk is ready (negative: late)
    start, slip = place_chunk(cursor, gap, now, lead)
    assert type(start) is int and type(slip) is int
    assert start >= due and start >= now + lead // 2
    assert slip == start - due
    if due - now >= lead // 2:
        assert slip == 0 and start == due  # on time: exactly when due
    else:
        assert start == now + lead and 2 * slip > lead  # underrun: a full lead of notice


@SETTINGS
@given(times, gaps, times, times, leads)
def test_later_readiness_never_gives_an_earlier_start(cursor, gap, now_a, now_b, lead):
    """place_chunk's start is monotone in the moment the chunk became ready."""
    early, late = sorted((now_a, now_b))
    assert place_chunk(cursor, gap, early, lead)[0] <= place_chunk(cursor, gap, late, lead)[0]


# -- position_at ------------------------------------------------------------------


@st.composite
def timelines(draw) -> tuple[list[Chunk], int]:
    """Placed chunks in order with gaps >= 0 (maybe followed by unplaced ones), and a moment to look at."""
    start = draw(st.integers(min_value=0, max_value=10**9))
    chunks = []
    for seq in range(draw(st.integers(min_value=0, max_value=6))):
        duration = draw(st.integers(min_value=1, max_value=5_000))
        chunks.append(Chunk(f"{next(_ids):016x}", "r", seq, "s", duration, 0, starts_at_ms=start))
        start += duration + draw(st.integers(min_value=0, max_value=2_000))
    for seq in range(len(chunks), len(chunks) + draw(st.integers(min_value=0, max_value=2))):
        chunks.append(Chunk(f"{next(_ids):016x}", "r", seq, "s", 100, 0))
    first = chunks[0].starts_at_ms if chunks and chunks[0].scheduled else 0
    now = draw(st.integers(min_value=max(0, first - 3_000), max_value=start + 3_000))
    return chunks, now


def expected_position(chunks: list[Chunk], now_ms: int) -> tuple[Chunk, int] | None:
    """The oracle: the placed chunk sounding at now, else the first placed one still to come."""
    placed = []
    for chunk in chunks:
        if not chunk.scheduled:
            break
        placed.append(chunk)
    sounding = [c for c in placed if c.starts_at_ms <= now_ms < c.ends_at_ms]
    assert len(sounding) <= 1, "placed chunks overlap"
    if sounding:
        return sounding[0], now_ms - sounding[0].starts_at_ms
    upcoming = [c for c in placed if c.starts_at_ms > now_ms]
    return (upcoming[0], now_ms - upcoming[0].starts_at_ms) if upcoming else None


def assert_position(found, chunks: list[Chunk], now_ms: int) -> None:
    expected = expected_position(chunks, now_ms)
    if expected is None:
        assert found is None
        return
    assert found is not None and found.chunk is expected[0] and found.offset_ms == expected[1]
    assert type(found.offset_ms) is int
    if found.offset_ms >= 0:
        assert found.offset_ms < found.chunk.duration_ms  # within [0, duration)


@SETTINGS
@given(timelines())
def test_position_is_the_sounding_chunk_with_an_offset_inside_it_or_the_next_one(timeline):
    """position_at gives the chunk sounding at now with 0 <= offset < duration, else the next with offset < 0."""
    chunks, now = timeline
    assert_position(position_at(chunks, now), chunks, now)


# -- the channel under a stepped clock ----------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One request: when it is submitted, its chunks' lengths and how long each takes to make."""

    submit_at_ms: int
    durations_ms: tuple[int, ...]
    make_ms: tuple[int, ...]
    auto: bool = False
    fault: tuple[str, int] | None = None  # ("fail" | "stall", seq) or ("cancel", ms after submission)


@dataclass
class Job:
    request: Request
    seq: int
    done_at_ms: int | None  # None: the engine stalls on this sentence


class DeadlineNotAhead(AssertionError):
    """After a tick, the next deadline is not after now: the runner's clock task would spin."""


class Sim:
    def __init__(
        self, config: TimelineConfig, plans: list[Plan], extra_ticks: list[int], line_is_submission_order: bool
    ):
        self.cfg = config
        self.channel = Channel("table", config)
        self.ordered = line_is_submission_order
        self.now = 0
        self.waiting = sorted(enumerate(plans), key=lambda item: (item[1].submit_at_ms, item[0]))
        self.extra_ticks = sorted(extra_ticks)
        self.cancels: list[tuple[int, str]] = []
        self.plans: dict[str, Plan] = {}
        self.index: dict[str, int] = {}  # request id -> its place in submission order
        self.requests: list[Request] = []
        self.chunks: dict[str, Chunk] = {}
        self.job: Job | None = None
        self.placed: dict[str, int] = {}  # chunk id -> start when it was announced
        self.placement_order: list[tuple[int, int]] = []  # (submission index, seq) as announced
        self.shifts: dict[str, int] = {}
        self.timed_out: dict[str, int] = {}  # request id -> failed_at_ms, for generation timeouts
        self.played_order: list[str] = []
        self.failed_any = False  # a failure moves the cursor even when nothing was placed

    # -- driving ----------------------------------------------------------------

    def run(self) -> None:
        for _ in range(MAX_STEPS):
            self._work()
            at, _, action = min(self._candidates(), default=(None, None, None))
            if action is None:
                return
            assert at >= self.now
            self.now = at
            action()
        raise AssertionError("the channel never settled")

    def _candidates(self):
        if self.waiting:
            yield self.waiting[0][1].submit_at_ms, 0, self._submit
        if self.job and self.job.done_at_ms is not None:
            yield self.job.done_at_ms, 1, self._chunk_done
        if self.cancels:
            yield min(self.cancels)[0], 2, self._cancel
        deadline = self.channel.next_deadline_ms()
        if deadline is not None:
            yield max(deadline, self.now), 3, self._tick
        if self.extra_ticks:
            yield self.extra_ticks[0], 4, self._extra_tick

    def _submit(self) -> None:
        _, plan = self.waiting.pop(0)
        request = Request(
            f"{next(_ids):016x}",
            "table",
            "text",
            [f"s{i}" for i in range(len(plan.durations_ms))],
            self.now,
            auto=plan.auto,
        )
        self.plans[request.request_id], self.index[request.request_id] = plan, len(self.requests)
        self.requests.append(request)
        if plan.fault and plan.fault[0] == "cancel":
            self.cancels.append((self.now + plan.fault[1], request.request_id))
        self._apply(self.channel.submit, request)

    def _cancel(self) -> None:
        due = min(self.cancels)
        self.cancels.remove(due)
        request_id = due[1]
        if any(r.request_id == request_id for r in self.channel.line):
            self._apply(self.channel.cancel, request_id)

    def _tick(self) -> None:
        self._apply(self.channel.tick)
        deadline = self.channel.next_deadline_ms()
        if deadline is not None and deadline <= self.now:
            raise DeadlineNotAhead(f"after tick({self.now}) the next deadline is {deadline}")

    def _extra_tick(self) -> None:
        self.extra_ticks.pop(0)
        self._tick()

    # -- the generation worker, as in ChannelRunner._generate_loop ------------------

    def _work(self) -> None:
        if self.job and not any(r is self.job.request for r in self.channel.line):
            self.job = None  # failed or cancelled: the runner cancels the synthesis
        if self.job is None and (request := self.channel.next_job()) is not None:
            self._apply(self.channel.generation_started, request.request_id)
            self._begin(request)

    def _begin(self, request: Request) -> None:
        plan, seq = self.plans[request.request_id], request.next_seq
        stalls = plan.fault == ("stall", seq)
        self.job = Job(request, seq, None if stalls else self.now + plan.make_ms[seq])

    def _chunk_done(self) -> None:
        job, self.job = self.job, None
        request, plan = job.request, self.plans[job.request.request_id]
        if self.channel.next_job() is not request:
            return  # something went before it in line: the runner drops this chunk and moves on
        if plan.fault == ("fail", job.seq):
            self._apply(self.channel.generation_failed, request.request_id, "the engine said no")
            return
        chunk = Chunk(
            f"{next(_ids):016x}",
            request.request_id,
            job.seq,
            request.sentences[job.seq],
            plan.durations_ms[job.seq],
            self.now,
        )
        self.chunks[chunk.chunk_id] = chunk
        self._apply(self.channel.chunk_ready, chunk)
        if not request.generated and self.channel.next_job() is request:
            self._begin(request)

    # -- checking every step ------------------------------------------------------

    def _apply(self, step, *args) -> list[Event]:
        before = {c.chunk_id: c.state for c in self.chunks.values()}
        events = step(*args, self.now)
        for i, event in enumerate(events):
            self._check_event(event, events[i - 1] if i else None)
        self._check_state(before)
        return events

    def _check_event(self, event: Event, previous: Event | None) -> None:
        lead = self.cfg.lead_ms
        match event:
            case StreamStarted(request):
                assert request.state == RequestState.GENERATING
            case ChunkScheduled(request, chunk):
                start = chunk.starts_at_ms
                assert chunk.chunk_id not in self.placed, "a chunk was announced twice"
                assert type(start) is int
                assert start >= self.now + lead // 2, "placed with less than half a lead of notice"
                assert start >= chunk.ready_at_ms + lead // 2
                first_announced = isinstance(previous, StreamStarted) and previous.request is request
                assert first_announced == (chunk.seq == 0), "StreamStarted goes right before the first chunk only"
                if not self.placed and not self.failed_any:
                    assert start == self.now + lead, "a fresh channel starts one lead ahead"
                self.placed[chunk.chunk_id] = start
                self.placement_order.append((self.index[request.request_id], chunk.seq))
            case TimelineShifted(request, chunk, shift_ms):
                assert isinstance(previous, ChunkScheduled) and previous.chunk is chunk
                assert type(shift_ms) is int and 2 * shift_ms > lead and chunk.seq > 0
                self.shifts[chunk.chunk_id] = shift_ms
            case RequestPlayed(request):
                assert request.state == RequestState.PLAYED
                assert all(c.state == ChunkState.PLAYED for c in request.chunks)
                assert len(request.chunks) == len(request.sentences)
                assert request.finished_at_ms == max(c.ends_at_ms for c in request.chunks) <= self.now
                self.played_order.append(request.request_id)
            case RequestFailed(request, reason, failed_at_ms, _):
                assert request.state == RequestState.FAILED and failed_at_ms == self.now and reason
                self.failed_any = True
                if "timed out" in reason:
                    self.timed_out[request.request_id] = failed_at_ms
            case RequestCancelled(request, _, stopped_at_ms, _):
                assert request.state == RequestState.CANCELLED and stopped_at_ms == self.now

    def _check_state(self, before: dict[str, ChunkState]) -> None:
        for chunk_id, start in self.placed.items():
            assert self.chunks[chunk_id].starts_at_ms == start, "an announced chunk moved"
        for request in self.requests:
            placed = [c.scheduled for c in request.chunks]
            assert placed == sorted(placed, reverse=True), "chunks are placed in seq order"
            in_line = any(r is request for r in self.channel.line)
            assert in_line == (request.state not in FINAL_REQUEST_STATES)
            if not in_line:
                assert type(request.finished_at_ms) is int
            for chunk in request.chunks:
                assert chunk.scheduled == (chunk.chunk_id in self.placed), "every placement is announced"
                self._check_chunk_move(request, chunk, before[chunk.chunk_id] if chunk.chunk_id in before else None)
        self._check_position()

    def _check_chunk_move(self, request: Request, chunk: Chunk, was: ChunkState | None) -> None:
        if was != ChunkState.READY or chunk.state == ChunkState.READY:
            return
        if chunk.state == ChunkState.PLAYED:  # its end passed, or its request failed while it sounded
            assert chunk.ends_at_ms <= self.now or (
                request.state == RequestState.FAILED and chunk.starts_at_ms <= self.now
            )
        else:
            assert request.state in (RequestState.FAILED, RequestState.CANCELLED)

    def _check_position(self) -> None:
        head = self.channel.now_playing()
        found = self.channel.position(self.now)
        if head is None:
            assert found is None
        else:
            assert_position(found, head.live_chunks(), self.now)

    # -- checking the outcome -------------------------------------------------------

    def check_settled(self) -> None:
        assert self.channel.line == [] and self.job is None
        for request in self.requests:
            assert request.state in FINAL_REQUEST_STATES
            assert all(c.state != ChunkState.READY for c in request.chunks)
        self._check_heard_audio()
        self._check_slips()
        for request_id, failed_at in self.timed_out.items():
            request = next(r for r in self.requests if r.request_id == request_id)
            assert failed_at == request.generation_started_ms + self.cfg.generation_timeout_ms

    def heard(self) -> list[tuple[int, int, int, int]]:
        """(start, end, submission index, seq) of every stretch of audio that sounded."""
        out = []
        for request in self.requests:
            for chunk in request.chunks:
                if not chunk.scheduled:
                    continue
                end = chunk.ends_at_ms
                if chunk.state == ChunkState.DISCARDED:  # only a skip cuts audio short; other discards went unheard
                    cut = request.finished_at_ms if request.state == RequestState.CANCELLED else chunk.starts_at_ms
                    end = min(end, cut)
                if end > chunk.starts_at_ms:
                    out.append((chunk.starts_at_ms, end, self.index[request.request_id], chunk.seq))
        return sorted(out)

    def _check_heard_audio(self) -> None:
        """Heard audio never overlaps, keeps the sentence and request gaps, and plays in line order."""
        heard = self.heard()
        for (_, end, index, seq), (start, _, next_index, next_seq) in zip(heard, heard[1:]):
            same = index == next_index
            assert start >= end + (self.cfg.sentence_gap_ms if same else self.cfg.request_gap_ms)
            if self.ordered:
                assert (index, seq) < (next_index, next_seq)

    def _check_slips(self) -> None:
        """Each chunk starts at the previous one's end plus the sentence gap plus its announced shift."""
        for request in self.requests:
            placed = [c for c in request.chunks if c.scheduled]
            for previous, chunk in zip(placed, placed[1:]):
                assert chunk.starts_at_ms == previous.ends_at_ms + self.cfg.sentence_gap_ms + self.shifts.get(
                    chunk.chunk_id, 0
                )
            if placed:
                planned = placed[0].starts_at_ms + sum(c.duration_ms + self.cfg.sentence_gap_ms for c in placed[:-1])
                assert placed[-1].starts_at_ms - planned == sum(self.shifts.get(c.chunk_id, 0) for c in placed)


configs = st.builds(
    TimelineConfig,
    lead_ms=st.integers(1, 1_000),
    sentence_gap_ms=st.integers(0, 500),
    request_gap_ms=st.integers(0, 1_500),
    generation_timeout_ms=st.just(TIMEOUT_MS),
)


@st.composite
def plan(draw, faults: bool = False, auto: bool = False) -> Plan:
    n = draw(st.integers(1, 4))
    fault = None
    if faults:
        fault = draw(
            st.one_of(
                st.none(),
                st.tuples(st.sampled_from(["fail", "stall"]), st.integers(0, n - 1)),
                st.tuples(st.just("cancel"), st.integers(0, 15_000)),
            )
        )
    return Plan(
        submit_at_ms=draw(st.integers(0, 15_000)),
        durations_ms=tuple(draw(st.lists(st.integers(1, 3_000), min_size=n, max_size=n))),
        make_ms=tuple(draw(st.lists(st.integers(0, 4_000), min_size=n, max_size=n))),
        auto=draw(st.booleans()) if auto else False,
        fault=fault,
    )


extra_ticks = st.lists(st.integers(0, 60_000), max_size=12)


@SETTINGS
@given(configs, st.lists(plan(), min_size=1, max_size=6), extra_ticks)
def test_healthy_requests_all_play_in_order_without_overlap_and_slips_are_announced(config, plans, ticks):
    """Random submissions, synthesis times and ticks: every request plays, in order, with the gaps,
    never overlapping, never moved once announced, and every slip is a TimelineShifted."""
    sim = Sim(config, plans, ticks, line_is_submission_order=True)
    sim.run()
    sim.check_settled()
    assert all(r.state == RequestState.PLAYED for r in sim.requests)
    assert sim.played_order == [r.request_id for r in sorted(sim.requests, key=lambda r: sim.index[r.request_id])]
    assert sim.placement_order == sorted(sim.placement_order)
    assert len(sim.placement_order) == sum(len(p.durations_ms) for p in plans)


@SETTINGS
@given(configs, st.lists(plan(faults=True), min_size=1, max_size=6), extra_ticks)
def test_failures_stalls_and_cancels_never_make_audio_overlap(config, plans, ticks):
    """With engine failures, stalls (generation timeouts) and cancels at random moments, the line still
    drains into final states, heard audio never overlaps and keeps its gaps, and timeouts fire on time."""
    sim = Sim(config, plans, ticks, line_is_submission_order=True)
    sim.run()
    sim.check_settled()
    assert sim.placement_order == sorted(sim.placement_order)
    for request in sim.requests:
        fault = sim.plans[request.request_id].fault
        if request.state == RequestState.CANCELLED:
            assert fault is not None and fault[0] == "cancel"
        elif fault is None or fault[0] == "cancel":
            assert request.state == RequestState.PLAYED
        else:
            assert request.state == RequestState.FAILED
            assert (request.request_id in sim.timed_out) == (fault[0] == "stall")


@SETTINGS
@given(configs, st.lists(plan(auto=True), min_size=1, max_size=6), extra_ticks)
@example(
    TimelineConfig(lead_ms=500, sentence_gap_ms=250, request_gap_ms=600, generation_timeout_ms=TIMEOUT_MS),
    [Plan(0, (5_000,), (0,), auto=True), Plan(0, (5_000,), (10,), auto=True), Plan(100, (300, 300), (10, 7_000))],
    [],
)
def test_after_every_tick_the_next_deadline_is_in_the_future(config, plans, ticks):
    """Whatever the line order (auto-DJ items give way to producers' requests), a tick always leaves
    next_deadline_ms() after now, so the clock task sleeps instead of spinning."""
    sim = Sim(config, plans, ticks, line_is_submission_order=False)
    sim.run()
    sim.check_settled()
