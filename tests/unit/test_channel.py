"""The channel timeline, driven by a stepped clock: no sockets, no sleeping."""

from itertools import count
from random import Random

import pytest

from broadcaster.core.channel import Channel
from broadcaster.core.events import (
    ChunkScheduled,
    QueueChanged,
    RequestFailed,
    RequestPlaced,
    RequestPlayed,
    StreamStarted,
    TimelineShifted,
)
from broadcaster.core.model import Chunk, RepeatMode, Request
from broadcaster.core.states import ChunkState, RequestState
from broadcaster.core.timeline import TimelineConfig

CFG = TimelineConfig(lead_ms=500, sentence_gap_ms=250, request_gap_ms=600, generation_timeout_ms=10_000)
_ids = count()


def make_request(*sentences: str, at: int = 0) -> Request:
    return Request(f"{next(_ids):016x}", "table", " ".join(sentences), list(sentences), at)


def make_chunk(request: Request, duration_ms: int, ready_at: int) -> Chunk:
    return Chunk(
        f"{next(_ids):016x}",
        request.request_id,
        request.next_seq,
        request.sentences[request.next_seq],
        duration_ms,
        ready_at,
    )


def kinds(events) -> list[type]:
    return [type(e) for e in events]


@pytest.fixture
def channel() -> Channel:
    return Channel("table", CFG)


def generate(channel: Channel, request: Request, durations: list[int], now: int) -> list:
    """Start generation and deliver every chunk at `now`."""
    events = channel.generation_started(request.request_id, now)
    for duration in durations:
        events += channel.chunk_ready(make_chunk(request, duration, now), now)
    return events


def test_first_chunk_starts_one_lead_after_it_is_ready(channel):
    """On an idle channel the first chunk is placed lead_ms ahead of the moment it was ready."""
    request = make_request("Hello.", "World.")
    channel.submit(request, 0)
    events = generate(channel, request, [1000], now=200)
    assert StreamStarted in kinds(events)
    assert request.chunks[0].starts_at_ms == 700


def test_chunks_follow_each_other_with_the_sentence_gap(channel):
    """Each chunk starts at the previous chunk's end plus the sentence gap."""
    request = make_request("One.", "Two.", "Three.")
    channel.submit(request, 0)
    generate(channel, request, [1000, 2000, 500], now=0)
    assert [c.starts_at_ms for c in request.chunks] == [500, 1750, 4000]


def test_late_chunk_slips_the_timeline_and_says_so(channel):
    """A chunk ready after it was due is placed lead_ms ahead of now and a TimelineShifted reports the slip."""
    request = make_request("One.", "Two.")
    channel.submit(request, 0)
    generate(channel, request, [1000], now=0)  # chunk 0 plays 500..1500; chunk 1 due at 1750
    events = channel.chunk_ready(make_chunk(request, 800, 2000), 2000)
    shifted = [e for e in events if isinstance(e, TimelineShifted)]
    assert request.chunks[1].starts_at_ms == 2500
    assert shifted[0].shift_ms == 750


def test_chunk_ready_half_a_lead_before_due_is_not_a_slip(channel):
    """A chunk ready at least half the lead before it is due starts exactly when due."""
    request = make_request("One.", "Two.")
    channel.submit(request, 0)
    generate(channel, request, [1000], now=0)
    events = channel.chunk_ready(make_chunk(request, 800, 1500), 1500)
    assert TimelineShifted not in kinds(events)
    assert request.chunks[1].starts_at_ms == 1750


def test_next_request_soon_after_the_last_gets_the_full_lead(channel):
    """A request submitted just as the previous one ends still gets lead_ms of notice."""
    first, second = make_request("First."), make_request("Second.")
    channel.submit(first, 0)
    generate(channel, first, [1000], now=0)  # plays 500..1500; the next would be due at 2100
    channel.tick(1500)
    channel.submit(second, 2000)
    generate(channel, second, [500], now=2000)
    assert second.starts_at_ms == 2500


def test_next_request_goes_on_air_one_lead_before_it_sounds(channel):
    """A generated-ahead request is announced only when the cursor is within lead_ms, and starts after the request gap."""
    first, second = make_request("First."), make_request("Second.")
    channel.submit(first, 0)
    channel.submit(second, 0)
    generate(channel, first, [3000], now=0)  # plays 500..3500
    events = generate(channel, second, [1000], now=100)
    assert StreamStarted not in kinds(events)
    assert channel.next_deadline_ms() == 3500  # the first request's end
    channel.tick(3500)
    assert channel.next_deadline_ms() == 3500 + 600 - 500
    assert StreamStarted in kinds(channel.tick(3600))
    assert second.chunks[0].starts_at_ms == 4100


def test_auto_advance_marks_played_and_moves_the_line(channel):
    """When the last chunk ends the request is played and the next one becomes now playing."""
    first, second = make_request("First."), make_request("Second.")
    channel.submit(first, 0)
    channel.submit(second, 0)
    generate(channel, first, [1000], now=0)
    generate(channel, second, [1000], now=0)
    events = channel.tick(1500)
    assert RequestPlayed in kinds(events) and QueueChanged in kinds(events)
    assert first.state == RequestState.PLAYED and first.finished_at_ms == 1500
    assert all(c.state == ChunkState.PLAYED for c in first.chunks)
    assert channel.now_playing() is second
    channel.tick(1500 + 600 - 500)
    assert second.starts_at_ms == 2100


def test_no_ack_is_needed_to_advance(channel):
    """Playback advances on the clock alone: ticking past the end finishes the request."""
    request = make_request("Only.")
    channel.submit(request, 0)
    generate(channel, request, [400], now=0)
    channel.tick(900)
    assert request.state == RequestState.PLAYED and channel.line == []


def test_generation_timeout_fails_the_request_and_the_next_goes_on(channel):
    """A request not fully generated within the timeout fails; queued requests continue."""
    stuck, after = make_request("One.", "Two."), make_request("After.")
    channel.submit(stuck, 0)
    channel.submit(after, 0)
    channel.generation_started(stuck.request_id, 0)
    assert channel.next_deadline_ms() == 10_000
    events = channel.tick(10_000)
    assert RequestFailed in kinds(events)
    assert stuck.state == RequestState.FAILED and "timed out after 10 s" in stuck.error
    assert channel.next_job() is after


def test_failure_keeps_the_sounding_chunk_and_discards_the_rest(channel):
    """A failing on-air request lets the chunk already playing finish; later chunks are dropped."""
    request, after = make_request("One.", "Two.", "Three."), make_request("After.")
    channel.submit(request, 0)
    channel.submit(after, 0)
    generate(channel, request, [1000, 1000], now=0)  # 500..1500, 1750..2750
    events = channel.generation_failed(request.request_id, "engine crashed", 1000)
    assert [c.state for c in request.chunks] == [ChunkState.PLAYED, ChunkState.DISCARDED]
    assert events[0].discarded_chunk_ids == (request.chunks[1].chunk_id,)
    assert request.finished_at_ms == 1500
    generate(channel, after, [500], now=1000)
    channel.tick(1500 + 600 - 500)
    assert after.chunks[0].starts_at_ms == 1500 + 600


def test_tts_failure_before_any_audio(channel):
    """A request failing before any chunk exists leaves the timeline untouched."""
    request = make_request("One.")
    channel.submit(request, 0)
    channel.generation_started(request.request_id, 0)
    events = channel.generation_failed(request.request_id, "boom", 50)
    assert kinds(events) == [RequestFailed, QueueChanged]
    assert channel.line == [] and channel.next_deadline_ms() is None


def test_late_join_position(channel):
    """At any moment the position names the chunk sounding and the offset into it, or the next one due."""
    request = make_request("One.", "Two.")
    channel.submit(request, 0)
    generate(channel, request, [1000, 1000], now=0)  # 500..1500, 1750..2750
    assert (channel.position(1200).chunk.seq, channel.position(1200).offset_ms) == (0, 700)
    assert (channel.position(1600).chunk.seq, channel.position(1600).offset_ms) == (1, -150)
    assert channel.position(2000).offset_ms == 250


def test_restore_continues_the_timeline_and_keeps_pending(channel):
    """After a restart the on-air request keeps its chunk times and generation resumes; pending stays pending."""
    request, pending = make_request("One.", "Two."), make_request("Later.")
    channel.submit(request, 0)
    channel.submit(pending, 0)
    generate(channel, request, [1000], now=0)
    restored = Channel("table", CFG)
    restored.restore([request, pending], None, now_ms=900)
    assert restored.now_playing() is request and request.chunks[0].starts_at_ms == 500
    assert request.generation_started_ms == 900 and restored.next_job() is request
    assert pending.state == RequestState.PENDING


def test_chunk_out_of_order_is_refused(channel):
    """Chunks must arrive in sequence."""
    request = make_request("One.", "Two.")
    channel.submit(request, 0)
    chunk = make_chunk(request, 100, 0)
    chunk.seq = 1
    with pytest.raises(ValueError):
        channel.chunk_ready(chunk, 0)


def test_chunks_of_an_on_air_request_are_announced_as_ready(channel):
    """Every placed chunk produces a ChunkScheduled event."""
    request = make_request("One.", "Two.")
    channel.submit(request, 0)
    events = generate(channel, request, [100, 100], now=0)
    assert kinds(events).count(ChunkScheduled) == 2


def test_producer_request_goes_before_auto_dj_tracks_not_yet_on_air(channel):
    """Narration queued while the auto-DJ has a track waiting plays first, at the next track boundary."""
    playing = make_request("Auto one.")
    playing.auto = True
    waiting = make_request("Auto two.")
    waiting.auto = True
    channel.submit(playing, 0)
    generate(channel, playing, [3000], now=0)
    channel.submit(waiting, 0)
    narration = make_request("Attention please.")
    channel.submit(narration, 100)
    assert channel.line == [playing, narration, waiting]


def test_move_reorders_only_what_is_not_on_the_air(channel):
    """Requests not yet placed can be moved among themselves; the one on the air cannot."""
    first, second, third = make_request("A."), make_request("B."), make_request("C.")
    for request in (first, second, third):
        channel.submit(request, 0)
    generate(channel, first, [1000], now=0)
    channel.move(third.request_id, 1, 0)
    assert channel.line == [first, third, second]
    with pytest.raises(ValueError):
        channel.move(first.request_id, 2, 0)
    with pytest.raises(ValueError):
        channel.move(second.request_id, 0, 0)


def test_shuffle_keeps_the_on_air_request_first(channel):
    """Shuffling permutes only the waiting requests."""
    requests = [make_request(f"R{i}.") for i in range(6)]
    for request in requests:
        channel.submit(request, 0)
    generate(channel, requests[0], [1000], now=0)
    channel.shuffle(Random(7), 0)
    assert channel.line[0] is requests[0] and sorted(r.request_id for r in channel.line) == sorted(
        r.request_id for r in requests
    )
    assert channel.line[1:] != requests[1:]


def test_request_placed_is_announced_once_its_last_chunk_is_placed(channel):
    """RequestPlaced marks the moment a request is committed to the timeline (repeat copies hook in here)."""
    request = make_request("One.", "Two.")
    channel.submit(request, 0)
    events = generate(channel, request, [100], now=0)
    assert RequestPlaced not in kinds(events)
    events = channel.chunk_ready(make_chunk(request, 100, 0), 0)
    assert RequestPlaced in kinds(events)


@pytest.mark.parametrize(("mode", "expected"), [(RepeatMode.ONE, ["A", "A2", "B"]), (RepeatMode.ALL, ["A", "B", "A2"])])
def test_repeat_copies_go_after_the_original_or_at_the_end(channel, mode, expected):
    """Repeat one queues the copy right after the original; repeat all queues it last."""
    a, b = make_request("A."), make_request("B.")
    a.text, b.text = "A", "B"
    channel.submit(a, 0)
    channel.submit(b, 0)
    channel.set_repeat(mode)
    copy = make_request("A.")
    copy.text = "A2"
    channel.insert_repeat(a, copy, 0)
    assert [r.text for r in channel.line] == expected


def test_a_repeat_one_copy_never_goes_before_a_request_already_on_the_timeline(channel):
    """With a lead longer than the request gap, the request after the original can be placed in the same
    step as the original's last chunk; its copy then goes after it, not into the middle of its sentences."""
    channel.lead_ms = 3000
    channel.set_repeat(RepeatMode.ONE)
    a, b = make_request("A."), make_request("B one.", "B two.")
    channel.submit(a, 0)
    channel.submit(b, 0)
    generate(channel, a, [2000], now=0)
    generate(channel, b, [1500], now=100)
    channel.tick(2700)
    assert b.chunks[0].scheduled  # A ends at 5000: B is on the timeline within the lead, before A's end
    copy = make_request("A.")
    channel.insert_repeat(a, copy, 2800)
    assert channel.line.index(copy) > channel.line.index(b)
    assert channel.next_job() is b


def test_needs_filler_only_when_nothing_waits(channel):
    """The auto-DJ is asked for a track only when every request in line is already on the air."""
    assert channel.needs_filler()
    request = make_request("One.")
    channel.submit(request, 0)
    assert not channel.needs_filler()
    generate(channel, request, [1000], now=0)
    assert channel.needs_filler()


def test_a_request_the_engine_cannot_keep_up_with_waits_until_all_its_audio_is_ready(channel):
    """With may_stream refusing, the first chunk is held; once the last is ready all play back to back."""
    channel.may_stream = lambda request: False
    request = make_request("One.", "Two.", "Three.")
    channel.submit(request, 0)
    events = generate(channel, request, [1000, 1000], now=100)
    assert StreamStarted not in kinds(events) and not request.chunks[0].scheduled
    assert channel.next_chunk_due_ms(request) is None  # nothing is on the air waiting for it
    events = channel.chunk_ready(make_chunk(request, 1000, 5000), 5000)
    assert StreamStarted in kinds(events) and TimelineShifted not in kinds(events)
    starts = [c.starts_at_ms for c in request.chunks]
    assert starts == [5500, 5500 + 1000 + 250, 5500 + 2 * (1000 + 250)]


def test_next_chunk_due_is_half_a_lead_before_the_gap_after_the_last_placed_chunk(channel):
    request = make_request("One.", "Two.")
    channel.submit(request, 0)
    generate(channel, request, [1000], now=0)
    assert channel.streaming() == [request]
    assert channel.next_chunk_due_ms(request) == 500 + 1000 + 250 - 250
    channel.chunk_ready(make_chunk(request, 800, 100), 100)
    assert channel.streaming() == []


def test_a_held_request_sets_no_deadline_that_would_make_the_clock_spin(channel):
    """While the engine is too busy for a held request, ticking at the deadline leaves the next one ahead."""
    playing, held = make_request("Now."), make_request("Later.", "Much later.")
    channel.submit(playing, 0)
    channel.submit(held, 0)
    generate(channel, playing, [2000], now=0)
    channel.may_stream = lambda request: False
    generate(channel, held, [1000], now=100)
    now = 0
    for _ in range(5):
        deadline = channel.next_deadline_ms()
        assert deadline is None or deadline > now
        now = deadline if deadline is not None else now + 1000
        channel.tick(now)


def test_a_request_pushed_aside_does_not_time_out_while_it_waits(channel):
    """An auto-DJ track half made when a producer's narration goes before it keeps its place and its time."""
    track = make_request("One.", "Two.")
    track.auto = True
    channel.submit(track, 0)
    channel.generation_started(track.request_id, 0)
    channel.chunk_ready(make_chunk(track, 5000, 0), 0)  # on the air: the narration goes after it
    waiting = make_request("Three.", "Four.")
    waiting.auto = True
    channel.submit(waiting, 0)
    channel.chunk_ready(make_chunk(track, 5000, 10), 10)
    channel.generation_started(waiting.request_id, 20)
    channel.chunk_ready(make_chunk(waiting, 1000, 30), 30)
    narration = make_request("Producer speaks.", "And goes on.")
    channel.submit(narration, 40)
    assert channel.next_job() is narration
    channel.generation_started(narration.request_id, 50)
    events = channel.tick(20 + CFG.generation_timeout_ms + 1)
    assert waiting.state == RequestState.GENERATING and RequestFailed not in kinds(events)


def test_the_next_request_waits_to_be_made_while_enough_audio_before_it_is_made():
    """A long queue is made as its turn nears: past `generate_ahead_ms` of audio made and not yet played
    the next request waits, one begun is finished, and what plays out lets the next one start."""
    channel = Channel("table", TimelineConfig(lead_ms=500, generate_ahead_ms=10_000))
    first, second, third = make_request("One.", "Two."), make_request("Three.", "Four."), make_request("Five.")
    for request in (first, second, third):
        channel.submit(request, 0)
    generate(channel, first, [6000, 6000], now=0)
    assert channel.next_job() is None  # 12 s made ahead: the second waits
    channel.tick(6500)  # the first chunk (500 to 6500) played out: 6 s ahead
    assert channel.next_job() is second
    generate(channel, second, [6000], now=6500)
    channel.tick(7000)
    assert channel.next_job() is second  # begun: it is finished whatever is ahead
    channel.chunk_ready(make_chunk(second, 6000, 7000), 7000)
    assert channel.next_job() is None  # 18 s made ahead of the third


def test_a_request_put_before_audio_made_ahead_counts_only_what_plays_before_it():
    """Narration put before auto-DJ tracks made ahead is made at once: their audio plays after it."""
    channel = Channel("table", TimelineConfig(lead_ms=500, generate_ahead_ms=10_000))
    playing, waiting = make_request("Auto one."), make_request("Auto two.")
    playing.auto = waiting.auto = True
    channel.submit(playing, 0)
    generate(channel, playing, [3000], now=0)
    channel.submit(waiting, 0)
    generate(channel, waiting, [20_000], now=0)
    narration = make_request("Attention please.")
    channel.submit(narration, 100)
    assert channel.line == [playing, narration, waiting]
    assert channel.next_job() is narration


def test_a_change_of_the_lines_order_is_marked_for_the_store_and_an_append_is_not(channel):
    """Only the line's order lives in memory alone: whatever changes it other than at the end (a producer's
    request before the auto-DJ's, a move, a shuffle) marks it for the adapter to persist."""
    channel.submit(make_request("First."), 0)
    channel.submit(make_request("Appended."), 0)
    auto = make_request("Auto.")
    auto.auto = True
    channel.submit(auto, 0)
    assert not channel.order_dirty
    channel.submit(make_request("Producer's."), 0)  # goes before the waiting auto-DJ request
    assert channel.order_dirty and channel.line[-1] is auto
    channel.order_dirty = False
    channel.shuffle(Random(1), 0)
    assert channel.order_dirty


def test_a_request_pushed_aside_is_not_failed_by_its_old_clock_when_the_worker_comes_back(channel):
    """An auto-DJ track half-made when a producer's narration goes before it: once the narration is made
    the track is the next job again, but its generation clock restarts only when the worker takes it
    up; the tick in between must not fail it with the clock from before."""
    playing = make_request(*["Long."] * 12)
    channel.submit(playing, 0)
    generate(channel, playing, [5000] * 12, now=0)
    track = make_request(*["Song."] * 6)
    track.kind, track.auto = "track", True
    channel.submit(track, 0)
    generate(channel, track, [5000], now=1000)  # one of six segments made
    narration = make_request(*[f"Sentence {i}." for i in range(9)])
    channel.submit(narration, 2000)  # goes before the track
    assert channel.next_job() is narration
    now = 2000
    channel.generation_started(narration.request_id, now)
    for _ in range(9):  # a second a sentence: the track's clock from 1000 would be out at 11 000
        now += 1000
        channel.tick(now)
        channel.chunk_ready(make_chunk(narration, 2000, now), now)
    assert channel.next_job() is track
    assert RequestFailed not in kinds(channel.tick(now + 100))
    channel.generation_started(track.request_id, now + 200)
    assert RequestFailed in kinds(channel.tick(now + 200 + CFG.generation_timeout_ms))  # its own clock runs


def test_a_chunk_that_ended_before_a_skip_stays_played_though_no_tick_retired_it(channel):
    """The skip comes between a chunk's end and the tick that would retire it: that chunk was heard."""
    request = make_request("One.", "Two.", "Three.")
    channel.submit(request, 0)
    generate(channel, request, [1000, 1000, 1000], now=0)  # 500..1500, 1750..2750, 3000..4000
    channel.tick(1400)
    cancelled = channel.cancel(request.request_id, 2000)[0]
    assert request.chunks[0].state == ChunkState.PLAYED
    assert cancelled.discarded_chunk_ids == tuple(c.chunk_id for c in request.chunks[1:])


def test_skipping_under_repeat_one_drops_a_copy_already_on_the_timeline(channel):
    """With a lead longer than the request gap the copy goes on the timeline before the original ends;
    a skip of the original in that window must not replay it."""
    channel.lead_ms = 3000
    channel.set_repeat(RepeatMode.ONE)
    original = make_request("The meeting moved to three.", "Room four.")
    channel.submit(original, 0)
    generate(channel, original, [2000, 1500], now=0)  # 3000..5000, 5250..6750
    copy = make_request("The meeting moved to three.", "Room four.")
    copy.repeat_of = original.request_id
    channel.insert_repeat(original, copy, 10)
    generate(channel, copy, [2000, 1500], now=200)
    channel.tick(4800)
    assert copy.chunks[0].scheduled
    channel.cancel(original.request_id, 5500)
    assert copy not in channel.line and copy.state == RequestState.CANCELLED
