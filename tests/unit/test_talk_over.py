"""Talk-over: narration on the air at once over the track playing, on a stepped clock."""

import pytest

from broadcaster.core.bed import TALK_OVER_DUCK_DB, duck_envelope
from broadcaster.core.channel import Channel
from broadcaster.core.events import RequestPlayed, StreamStarted
from broadcaster.core.model import Request
from broadcaster.core.states import RequestState
from broadcaster.core.timeline import TimelineConfig

from .test_channel import generate, kinds, make_chunk, make_request

CFG = TimelineConfig(lead_ms=500, sentence_gap_ms=250, request_gap_ms=600, generation_timeout_ms=10_000)


def track(channel: Channel, seconds: int, now: int = 0) -> Request:
    """A track of 5 s segments on the air from now + lead."""
    request = Request(f"track{seconds}", "radio", "A - Song", ["Song"] * (seconds // 5), now, kind="track")
    channel.submit(request, now)
    generate(channel, request, [5000] * (seconds // 5), now)
    return request


def over(text: str = "Stand-up in five minutes.") -> Request:
    request = make_request(text)
    request.over = True
    return request


def test_talk_over_goes_on_the_air_at_once_over_the_track():
    channel = Channel("radio", CFG)
    song = track(channel, 20)  # 500..20500
    talk = over()
    channel.submit(talk, 3000)
    assert channel.overlay == [talk] and talk.over
    events = generate(channel, talk, [1500], now=3100)
    assert StreamStarted in kinds(events)
    assert talk.chunks[0].starts_at_ms == 3600  # a lead from when it was ready, in the middle of the song
    assert [c.starts_at_ms for c in song.chunks] == [500, 5500, 10500, 15500]  # the song does not move
    assert channel.now_playing() is song and channel.line_position(talk.request_id) == 0
    assert channel.talk_over(3100) == [(3600, 5100)]


def test_without_over_narration_waits_for_the_track_and_without_a_track_over_means_nothing():
    channel = Channel("radio", CFG)
    track(channel, 10)  # 500..10500
    plain = make_request("After the song.")
    channel.submit(plain, 3000)
    generate(channel, plain, [1000], now=3000)
    assert plain.chunks[0].starts_at_ms is None  # waits for the track boundary
    idle = Channel("radio", CFG)
    talk = over()
    idle.submit(talk, 0)
    assert idle.overlay == [] and idle.line == [talk] and not talk.over


def test_talk_over_is_made_first_and_leaves_the_line_as_it_was():
    channel = Channel("radio", CFG)
    song = track(channel, 10)  # 500..10500
    queued = make_request("Next up.")
    channel.submit(queued, 1000)
    talk = over()
    channel.submit(talk, 2000)
    assert channel.next_job() is talk
    generate(channel, talk, [1000], now=2000)  # 2500..3500
    generate(channel, queued, [800], now=2100)
    events = channel.tick(3500)
    assert RequestPlayed in kinds(events) and talk.state == RequestState.PLAYED and channel.overlay == []
    channel.tick(channel.next_deadline_ms())  # the song's end, and the queued one goes on the air
    while queued.chunks[0].starts_at_ms is None:
        channel.tick(channel.next_deadline_ms())
    assert queued.chunks[0].starts_at_ms == song.scheduled_end_ms() + CFG.request_gap_ms  # as if no talk-over


def test_talk_over_can_be_skipped_and_moves_with_a_pause():
    channel = Channel("radio", CFG)
    song = track(channel, 10)
    first, second = over("One."), over("Two.")
    channel.submit(first, 1000)
    channel.submit(second, 1000)
    generate(channel, first, [1000], now=1000)  # 1500..2500
    generate(channel, second, [1000], now=1000)  # after it: 3100..4100
    assert second.chunks[0].starts_at_ms == 2500 + CFG.request_gap_ms
    channel.pause(1600)  # at 2100
    channel.resume(5000)  # at 5500: a shift of 3400
    assert first.chunks[0].starts_at_ms == 1500 + 3400 and song.chunks[1].starts_at_ms == 5500 + 3400
    events = channel.cancel(second.request_id, 5000)
    assert events[0].request is second and channel.overlay == [first]


def test_a_restart_puts_talk_over_back_over_the_track():
    channel = Channel("radio", CFG)
    song = track(channel, 10)
    talk = over()
    channel.submit(talk, 1000)
    talk.chunks.append(make_chunk(talk, 1000, 1000))
    restarted = Channel("radio", CFG)
    restarted.restore([song, talk], None, 1200)
    assert restarted.line == [song] and restarted.overlay == [talk]


def test_the_track_dips_by_the_talk_over_depth():
    points = duck_envelope([(3600, 5100)], TALK_OVER_DUCK_DB)
    assert points[1] == (3600, 10 ** (TALK_OVER_DUCK_DB / 20))


def test_talk_over_sent_while_paused_goes_over_the_track_after_the_resume():
    channel = Channel("radio", CFG)
    song = track(channel, 10)  # 500..10500
    channel.pause(2000)  # at 2500
    talk = over()
    channel.submit(talk, 20_000)  # long past the song's announced end: but it stands still at the pause
    assert channel.overlay == [talk]
    generate(channel, talk, [1000], now=20_000)
    assert talk.chunks[0].starts_at_ms is None  # nothing new on the air while paused
    channel.resume(21_000)  # at 21_500: a shift of 19_000
    assert talk.chunks[0].starts_at_ms == 21_500 and song.chunks[0].starts_at_ms == 19_500


def test_talk_over_that_outlasts_its_track_holds_the_next_request_until_it_ends():
    """Talk-over sent in a track's last second: its later sentences run past the track, so the next
    request in line waits for it (and the gap) instead of going on the air under it, two voices at once."""
    channel = Channel("radio", CFG)
    track(channel, 5)  # 500..5500
    following = make_request("Up next: another song.")
    channel.submit(following, 100)
    generate(channel, following, [3000], now=100)  # made ahead, waits for the track's end
    talk = make_request("Stand-up in five minutes.", "Bring your notes.", "And coffee.")
    talk.over = True
    channel.submit(talk, 5000)
    assert channel.overlay == [talk]
    channel.generation_started(talk.request_id, 5000)
    channel.chunk_ready(make_chunk(talk, 2000, 5000), 5000)  # 5500..7500
    for now in range(5000, 20_001, 100):
        channel.tick(now)
        if now in (5600, 7000):  # its next sentences come while the first is heard
            channel.chunk_ready(make_chunk(talk, 2000, now), now)
    talk_end = talk.chunks[-1].ends_at_ms
    assert talk_end == 12_000 and following.chunks[0].starts_at_ms >= talk_end + CFG.request_gap_ms
    assert following.state == RequestState.PLAYED


def test_talk_over_goes_over_a_track_placed_within_the_lead_behind_the_narration_still_playing():
    """With a long lead the track is on the timeline while the narration before it still plays: talk-over
    sent then goes over the track, as the docs say, not after the whole track."""
    channel = Channel("radio", CFG)
    channel.lead_ms = 3000
    narration = make_request("Good morning.")
    channel.submit(narration, 0)
    generate(channel, narration, [2000], now=0)  # 3000..5000
    song = Request("song", "radio", "A - Song", ["Song"] * 36, 0, kind="track")
    channel.submit(song, 0)
    generate(channel, song, [5000] * 36, now=100)
    channel.tick(3000)
    assert song.chunks[0].starts_at_ms == 5600 and channel.now_playing() is narration
    talk = over()
    channel.submit(talk, 3000)
    assert channel.overlay == [talk]
    generate(channel, talk, [1500], now=3100)
    assert talk.chunks[0].starts_at_ms >= song.chunks[0].starts_at_ms  # over the track, not the narration


def test_a_sentence_made_while_talk_over_came_in_is_kept_not_made_again():
    """The worker was making "Up next" when talk-over arrived and took it: the sentence it finished
    is kept (made once), unless its request left the line meanwhile."""
    channel = Channel("radio", CFG)
    track(channel, 20)  # 500..20500
    up_next = make_request("Up next.", "A new song.")
    channel.submit(up_next, 1000)
    channel.generation_started(up_next.request_id, 1000)
    made = make_chunk(up_next, 800, 1200)
    channel.submit(over(), 1100)  # talk-over is the worker's next job now
    assert channel.next_job() is not up_next
    channel.chunk_made(made, 1200)
    assert up_next.chunks == [made] and up_next.next_seq == 1
    gone = make_request("Cancelled while made.")
    channel.submit(gone, 1300)
    channel.generation_started(gone.request_id, 1300)
    late = make_chunk(gone, 800, 1400)
    channel.cancel(gone.request_id, 1350)
    assert channel.chunk_made(late, 1400) == [] and gone.chunks == []
    stale = make_chunk(up_next, 800, 1500)
    stale.seq = 0  # a sentence that was made already
    assert channel.chunk_made(stale, 1500) == [] and up_next.chunks == [made]


def test_talk_over_cannot_be_moved_and_says_why():
    channel = Channel("radio", CFG)
    track(channel, 20)
    talk = over()
    channel.submit(talk, 1000)
    with pytest.raises(ValueError, match="is talk-over, on the air over the track; it cannot be moved$"):
        channel.move(talk.request_id, 1, 1100)
