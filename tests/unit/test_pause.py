"""Pause and resume on the channel timeline, driven by a stepped clock: no sockets, no sleeping."""

import pytest

from broadcaster.core.channel import Channel
from broadcaster.core.events import ChannelPaused, ChannelResumed, RequestPlayed, StreamStarted, TimelineShifted
from broadcaster.core.states import ChunkState, RequestState
from broadcaster.core.timeline import TimelineConfig

from .test_channel import generate, kinds, make_chunk, make_request

CFG = TimelineConfig(lead_ms=500, sentence_gap_ms=250, request_gap_ms=600, generation_timeout_ms=10_000)


@pytest.fixture
def channel() -> Channel:
    return Channel("table", CFG)


def on_air(channel: Channel, durations: list[int], now: int = 0):
    """A request with all its chunks placed: the first at now + lead."""
    request = make_request(*[f"Sentence {i}." for i in range(len(durations))])
    channel.submit(request, now)
    generate(channel, request, durations, now)
    return request


def starts(request) -> list[int]:
    return [c.starts_at_ms for c in request.chunks]


def test_a_pause_takes_effect_a_lead_ahead(channel):
    on_air(channel, [1000])
    events = channel.pause(100)
    assert events == [ChannelPaused(600)]
    assert channel.paused_at_ms == 600 and channel.pause_dirty


def test_pausing_twice_or_resuming_a_playing_channel_is_refused(channel):
    with pytest.raises(ValueError, match="not paused"):
        channel.resume(0)
    channel.pause(0)
    with pytest.raises(ValueError, match="already paused"):
        channel.pause(10)


def test_the_chunk_cut_by_the_pause_goes_on_from_where_it_stopped(channel):
    """Chunks at 500 (1000 ms) and 1750: paused at 1000, resumed at 5000 + lead. The first had played
    500 ms; it goes on at 5500 with 500 ms left, so its start moves to 5000; the gap stays."""
    request = on_air(channel, [1000, 1000])
    assert starts(request) == [500, 1750]
    channel.pause(500)  # at 1000
    channel.tick(3000)
    assert request.chunks[0].state == ChunkState.READY  # it has not ended: it stands still
    events = channel.resume(5000)
    assert ChannelResumed(1000, 5500) in events
    assert events[0].shift_ms == 4500
    assert starts(request) == [5000, 6250]
    assert request.request_id in channel.dirty
    assert [c.from_ms for c in request.chunks] == [5500, None]  # the first is heard again from the resume
    assert request.chunks[0].sounds_from_ms == 5500


def test_what_ended_before_the_pause_stays_where_it_was(channel):
    request = on_air(channel, [400, 1000])  # 500-900, then 1150-2150
    channel.pause(1000)  # at 1500: the first has ended, the second is cut
    channel.tick(1600)
    assert request.chunks[0].state == ChunkState.PLAYED
    channel.resume(2000)  # at 2500: a shift of 1000
    assert starts(request) == [500, 2150]


def test_nothing_ends_is_placed_or_times_out_while_paused(channel):
    request = on_air(channel, [1000])
    waiting = make_request("Next.")
    channel.submit(waiting, 0)
    channel.pause(0)  # at 500, just as the first chunk starts
    assert channel.next_deadline_ms() is None  # the clock has nothing to do until the resume
    events = generate(channel, waiting, [800], now=100)
    assert StreamStarted not in kinds(events)
    events = channel.tick(60_000)  # a minute later: long past the end, the gap and the timeout
    assert events == []
    assert request.state == RequestState.GENERATING and waiting.chunks[0].starts_at_ms is None


def test_generation_timeout_does_not_run_while_paused(channel):
    request = make_request("One.", "Two.")
    channel.submit(request, 0)
    channel.generation_started(request.request_id, 0)
    channel.chunk_ready(make_chunk(request, 1000, 0), 0)  # on the air at 500; the second never comes
    channel.pause(0)
    channel.tick(9_000)
    channel.resume(9_000)  # paused from 500 to 9500: 9 s that do not count
    assert channel.tick(10_500) == []  # 10.5 s since it began, 1.5 s of it unpaused
    assert request.state == RequestState.GENERATING
    events = channel.tick(19_000)  # 10 s of unpaused time
    assert request.state == RequestState.FAILED and "timed out" in events[0].reason


def test_a_request_waiting_to_start_keeps_its_gap_across_the_pause(channel):
    """The first request ends at 1500; the next is due 600 ms later. Paused at 1700 (in that gap) and
    resumed at 3000 + lead: the rest of the gap (400 ms) follows the resume, and no underrun is counted."""
    first = on_air(channel, [1000])
    second = make_request("Next.")
    channel.submit(second, 0)
    generate(channel, second, [500], now=0)  # ready, waiting for its moment
    channel.tick(1500)
    channel.pause(1200)  # at 1700
    channel.tick(2000)
    channel.resume(3000)  # at 3500: a shift of 1800
    assert first.state == RequestState.PLAYED
    events = channel.tick(channel.next_deadline_ms())
    assert StreamStarted in kinds(events) and TimelineShifted not in kinds(events)
    assert second.chunks[0].starts_at_ms == 2100 + 1800


def test_a_resume_before_the_pause_took_effect_moves_nothing(channel):
    request = on_air(channel, [1000])
    channel.pause(0)  # at 500
    events = channel.resume(250)  # half a lead before the pause: listeners hear in time that it is off
    assert events[0] == ChannelResumed(500, 500) and events[0].shift_ms == 0
    assert starts(request) == [500] and not channel.paused
    channel.pause(300)  # at 800
    events = channel.resume(600)  # too close to the pause for every listener to hear in time: a lead on
    assert events[0] == ChannelResumed(800, 1100) and starts(request) == [500 + 300]


def test_skipping_while_paused_stops_at_the_pause(channel):
    request = on_air(channel, [1000])
    following = make_request("After.")
    channel.submit(following, 0)
    generate(channel, following, [500], now=0)
    channel.pause(300)  # at 800
    events = channel.cancel(request.request_id, 2000)
    assert events[0].stopped_at_ms == 800
    channel.resume(3000)  # at 3500
    channel.tick(channel.next_deadline_ms())
    # The skipped request stopped at the pause; the gap after it (600 ms) goes on after the resume.
    assert following.chunks[0].starts_at_ms == 3500 + 600


def test_a_restart_while_paused_stays_paused(channel):
    request = on_air(channel, [1000])
    channel.pause(0)  # at 500
    restarted = Channel("table", CFG)
    restarted.restore(list(channel.line), None, 60_000, paused_at_ms=channel.paused_at_ms)
    assert restarted.paused and request.state == RequestState.GENERATING
    assert restarted.position(60_000).offset_ms == 0  # still at the pause
    restarted.resume(60_000)
    assert starts(request) == [60_500]
    events = restarted.tick(61_500)
    assert RequestPlayed in kinds(events)


def test_the_position_stands_still_while_paused(channel):
    on_air(channel, [1000])
    channel.pause(200)  # at 700: 200 ms into the chunk
    assert channel.position(650).offset_ms == 150
    assert channel.position(5000).offset_ms == 200
