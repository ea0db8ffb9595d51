"""Open narrations: sentences appended while the request is on the air, on a stepped clock."""

import pytest

from broadcaster.core.channel import Channel
from broadcaster.core.events import RequestCancelled, RequestClosed, RequestPlaced, RequestPlayed, TimelineShifted
from broadcaster.core.model import Request, Writing
from broadcaster.core.states import RequestState
from broadcaster.core.timeline import TimelineConfig

from .test_channel import generate, kinds, make_chunk, make_request

CFG = TimelineConfig(
    lead_ms=500,
    sentence_gap_ms=250,
    request_gap_ms=600,
    generation_timeout_ms=10_000,
    open_idle_flush_ms=1500,
    open_idle_timeout_ms=30_000,
)


def opened(channel: Channel, *sentences: str, now: int = 0, tail: str = "") -> Request:
    request = Request("open0000000000001", "table", " ".join(sentences), list(sentences), now)
    request.writing = Writing(tail, (tail,) if tail else (), now)
    channel.submit(request, now)
    return request


def append(channel: Channel, request: Request, *sentences: str, now: int, tail: str = "", final=False):
    return channel.append(
        request.request_id, " ".join(sentences), list(sentences), (tail, [tail] if tail else []), final, now
    )


def make_next(channel: Channel, request: Request, duration_ms: int, now: int) -> list:
    """The worker makes the request's next sentence, ready at `now`."""
    assert channel.next_job() is request
    channel.generation_started(request.request_id, now)
    return channel.chunk_ready(make_chunk(request, duration_ms, now), now)


def test_an_open_narration_plays_what_it_has_and_waits_for_more_in_silence():
    channel = Channel("table", CFG)
    story = opened(channel, "The door creaks.")
    queued = make_request("Next message.")
    channel.submit(queued, 0)
    make_next(channel, story, 1000, now=100)
    assert story.chunks[0].starts_at_ms == 600
    assert channel.next_job() is queued  # nothing more of the story to make: the worker goes on ahead
    generate(channel, queued, [800], now=200)
    assert queued.starts_at_ms is None  # the queue waits for the open story
    channel.tick(1600)  # its only sentence has ended: still on the air, open
    assert channel.now_playing() is story and story.state == RequestState.GENERATING
    append(channel, story, "A draught blows in.", now=3000)
    assert channel.next_job() is story
    events = make_next(channel, story, 1000, now=3200)
    assert story.chunks[1].starts_at_ms == 3700  # ran dry: placed a lead from when it was ready
    assert TimelineShifted in kinds(events)  # announced as an underrun is
    assert queued.starts_at_ms is None
    events = append(channel, story, now=3300, final=True)
    assert RequestClosed in kinds(events) and RequestPlaced in kinds(events)
    assert story.writing is None and story.generated
    events = channel.tick(4700)
    assert RequestPlayed in kinds(events)
    assert channel.next_deadline_ms() == 4800
    channel.tick(4800)
    assert queued.starts_at_ms == 5300  # after the story's end and the request gap


def test_sentences_appended_in_time_follow_with_the_sentence_gap_only():
    channel = Channel("table", CFG)
    story = opened(channel, "One.")
    make_next(channel, story, 1000, now=0)  # 500..1500
    append(channel, story, "Two.", now=200)
    events = make_next(channel, story, 1000, now=400)
    assert story.chunks[1].starts_at_ms == 1750 and TimelineShifted not in kinds(events)


def test_the_unfinished_sentence_is_spoken_after_the_idle_flush():
    channel = Channel("table", CFG)
    story = opened(channel, now=0)
    append(channel, story, now=1000, tail="And then")
    assert channel.next_job() is None and channel.next_deadline_ms() == 2500
    assert channel.tick(2499) == [] and story.sentences == []
    channel.tick(2500)
    assert story.sentences == ["And then"] and story.writing.tail == "" and channel.next_job() is story
    assert story.writing is not None  # still open: more text starts a new sentence


def test_an_idle_open_narration_is_closed_with_what_it_has():
    channel = Channel("table", CFG)
    story = opened(channel, "Hello.", now=0, tail="And")
    make_next(channel, story, 1000, now=0)
    channel.tick(1500)  # the tail is flushed after 1.5 s without text
    make_next(channel, story, 500, now=1600)
    assert channel.next_deadline_ms() == 2600  # the flushed sentence's end (2100..2600), before the idle close
    channel.tick(2600)
    assert channel.next_deadline_ms() == 30_000
    events = channel.tick(30_000)
    assert story.writing is None and RequestPlayed in kinds(events)


def test_an_open_narration_closed_with_nothing_to_speak_is_cancelled():
    channel = Channel("table", CFG)
    story = opened(channel, now=0)
    events = channel.tick(30_000)
    assert RequestCancelled in kinds(events)
    assert story.state == RequestState.CANCELLED and story.error == "closed with nothing to speak"
    assert channel.line == []


def test_the_generation_timeout_counts_from_the_latest_append():
    channel = Channel("table", CFG)
    story = opened(channel, "One.", now=0)
    channel.generation_started(story.request_id, 0)  # the worker is on it, and stalls
    append(channel, story, "Two.", now=8000)
    channel.tick(10_000)  # 10 s after the start, 2 s after the append
    assert story.state == RequestState.GENERATING
    channel.tick(18_000)
    assert story.state == RequestState.FAILED


def test_an_open_narration_waiting_for_text_never_times_out():
    channel = Channel("table", CFG)
    story = opened(channel, "One.", now=0)
    make_next(channel, story, 1000, now=0)
    channel.tick(20_000)
    assert story.state == RequestState.GENERATING  # waiting for text is no stalled synthesis


def test_a_closed_request_takes_no_more_text():
    channel = Channel("table", CFG)
    story = opened(channel, "One.", now=0)
    append(channel, story, now=10, final=True)
    with pytest.raises(ValueError, match="closed"):
        append(channel, story, "Two.", now=20)
    plain = make_request("Plain.")
    channel.submit(plain, 0)
    with pytest.raises(ValueError, match="closed"):
        append(channel, plain, "More.", now=20)


def test_a_restored_open_narration_is_still_open_and_its_idle_times_start_again():
    channel = Channel("table", CFG)
    story = opened(channel, "One.", now=0, tail="And")
    make_next(channel, story, 1000, now=0)
    restored = Channel("table", CFG)
    restored.restore([story], None, 50_000)
    assert story.writing is not None and story.writing.appended_at_ms == 50_000
    assert restored.next_deadline_ms() == 51_500  # the flush, from the restart
