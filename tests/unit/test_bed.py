"""The bed's loop, fades and ducking envelope, as pure functions of server time: no clock, no audio."""

from dataclasses import replace

import pytest

from broadcaster.core.bed import ATTACK_MS, HOLD_MS, RELEASE_MS, Bed, BedTrack, Segment, duck_envelope, gain_at
from broadcaster.core.channel import Channel
from broadcaster.core.events import BedChanged
from broadcaster.core.timeline import TimelineConfig

DUCKED = 10 ** (-12 / 20)


def bed(origin_ms: int = 1000, **settings) -> Bed:
    """Two tracks: A (5000 + 2000 ms) and B (3000 ms): a 10 s loop."""
    tracks = (
        BedTrack("a", "Rain", (Segment("a0", 5000), Segment("a1", 2000))),
        BedTrack("b", "Wind", (Segment("b0", 3000),)),
    )
    return Bed("bed1", "ambience", tracks, origin_ms, **settings)


def heard(b: Bed, start_ms: int, end_ms: int) -> list[tuple[str, int]]:
    return [(s.chunk_id, s.starts_at_ms) for s in b.sounding(start_ms, end_ms)]


def test_the_loop_repeats_its_segments_end_to_end():
    b = bed()
    assert b.loop_ms == 10_000
    assert heard(b, 0, 1000) == []  # before the origin
    assert heard(b, 1000, 11_000) == [("a0", 1000), ("a1", 6000), ("b0", 8000)]
    assert heard(b, 10_500, 17_000) == [("b0", 8000), ("a0", 11_000), ("a1", 16_000)]  # the second pass
    assert heard(b, 1_000_000, 1_000_001) == [("b0", 998_000)]  # a late joiner, far on: same arithmetic


def test_a_bed_that_fades_out_ends_there():
    b = bed().fading_out(12_000, 2000)
    assert b.ends_at_ms == 14_000
    assert heard(b, 13_000, 30_000) == [("a0", 11_000)]
    assert b.fade_at(12_000) == 1.0 and b.fade_at(13_000) == 0.5 and b.fade_at(14_000) == 0.0


def test_a_new_bed_fades_in():
    b = bed(fades_in_at_ms=1000, fade_in_ms=2000)
    assert [b.fade_at(t) for t in (500, 1000, 2000, 3000, 9000)] == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_a_pause_moves_the_bed_and_it_goes_on_from_where_it_stopped():
    b = bed(fades_in_at_ms=1000, fade_in_ms=2000)
    paused = b.shifted(2000, 7000)  # paused 1 s into the bed, mid fade-in; resumed 5 s later
    assert paused.origin_ms == 6000 and paused.heard_from_ms == 7000
    assert heard(paused, 0, 7500) == [("a0", 6000)]  # heard again from the resume, 1 s into a0
    assert paused.fade_at(7000) == b.fade_at(2000) == 0.5  # the fade goes on from where it was
    assert list(paused.sounding(6500, 6900)) == []  # nothing of what was heard before the pause again


def test_a_pause_after_a_bed_ended_leaves_it_alone():
    gone = bed().fading_out(3000, 1000)
    assert gone.shifted(5000, 9000) == gone
    later = bed(origin_ms=8000)  # starts after the pause's moment: it simply moves
    moved = later.shifted(5000, 9000)
    assert moved.origin_ms == 12_000 and moved.heard_from_ms is None


def test_the_bed_dips_before_the_voice_and_comes_back_after():
    points = duck_envelope([(10_000, 12_000)], -12)
    assert points == [
        (10_000 - ATTACK_MS, 1.0),
        (10_000, pytest.approx(DUCKED)),
        (12_000 + HOLD_MS, pytest.approx(DUCKED)),
        (12_000 + HOLD_MS + RELEASE_MS, 1.0),
    ]
    assert gain_at(points, 0) == 1.0
    assert gain_at(points, 10_000 - ATTACK_MS / 2) == pytest.approx((1 + DUCKED) / 2)  # mid-ramp
    assert gain_at(points, 11_000) == pytest.approx(DUCKED)
    assert gain_at(points, 12_000 + HOLD_MS + RELEASE_MS / 2) == pytest.approx((1 + DUCKED) / 2)
    assert gain_at(points, 20_000) == 1.0


def test_sentences_close_together_share_one_dip_and_far_apart_get_two():
    together = duck_envelope([(1000, 3000), (3250, 5000)], -12)  # a 250 ms sentence gap
    assert len(together) == 4 and together[-1][0] == 5000 + HOLD_MS + RELEASE_MS
    apart = duck_envelope([(1000, 3000), (3000 + HOLD_MS + RELEASE_MS + ATTACK_MS + 1, 6000)], -12)
    assert len(apart) == 8
    assert gain_at(apart, 3000 + HOLD_MS + RELEASE_MS) == 1.0  # fully back up between them


def test_overlapping_voices_and_unsorted_input_make_one_dip():
    assert duck_envelope([(2000, 4000), (1000, 5000)], -6) == duck_envelope([(1000, 5000)], -6)


def test_no_voice_no_dip():
    assert duck_envelope([], -12) == []
    assert gain_at([], 1234) == 1.0


# -- the channel's beds ---------------------------------------------------------------------------


def channel() -> Channel:
    return Channel("tavern", TimelineConfig(lead_ms=500))


def test_a_bed_starts_a_lead_ahead_and_a_new_one_crossfades_with_it():
    c = channel()
    events = c.set_bed(bed(origin_ms=0, fade_in_ms=2000), 1000)
    assert events == [BedChanged(c.bed, ())]
    assert (c.bed.origin_ms, c.bed.fades_in_at_ms) == (1500, 1500)
    first = c.bed
    c.set_bed(bed(origin_ms=0, fade_in_ms=3000), 10_000)
    assert c.bed.origin_ms == 10_500
    assert c.fading_beds == (first.fading_out(10_500, 3000),)  # out over the new one's fade-in
    assert first.fade_at(12_000) == 1.0 and c.fading_beds[0].fade_at(12_000) == 0.5 == c.bed.fade_at(12_000)
    c.tick(13_499)
    assert c.fading_beds  # still fading
    c.tick(13_500)
    assert c.fading_beds == () and c.bed_dirty


def test_stopping_the_bed_fades_it_out_and_stopping_none_is_refused():
    c = channel()
    with pytest.raises(ValueError, match="no bed"):
        c.stop_bed(2000, 0)
    c.set_bed(bed(), 0)
    events = c.stop_bed(1000, 5000)
    assert c.bed is None and events[0].fading[0].fades_out_at_ms == 5500


def test_a_pause_moves_the_beds_with_the_line():
    c = channel()
    c.set_bed(bed(fade_in_ms=1000), 0)  # origin 500
    c.pause(1500)  # at 2000: 1.5 s into the bed
    events = c.resume(9500)  # at 10_000: a shift of 8 s
    changed = next(e for e in events if isinstance(e, BedChanged))
    assert changed.bed.origin_ms == 8500 and changed.bed.heard_from_ms == 10_000
    assert heard(c.bed, 10_000, 10_001) == [("a0", 8500)]  # 1.5 s into a0, where it stopped


def test_a_bed_set_while_paused_starts_at_the_resume():
    c = channel()
    c.pause(0)  # at 500
    c.set_bed(bed(), 3000)
    assert c.bed.origin_ms == 500
    c.resume(6000)  # at 6500
    assert c.bed.origin_ms == 6500 and c.bed.heard_from_ms is None


def test_beds_replaced_while_paused_do_not_pile_up():
    c = channel()
    c.set_bed(bed(), 0)  # heard from 500
    c.pause(1500)  # at 2000
    for k in range(8):  # a producer changing the scene again and again while paused
        c.set_bed(replace(bed(), bed_id=f"scene{k}", fade_in_ms=30_000), 2000 + k)
    # the bed heard before the pause fades out at the pause's moment; the ones never heard are gone
    assert [b.bed_id for b in c.fading_beds] == ["bed1"] and c.fading_beds[0].fades_out_at_ms == 2000
    assert c.bed.bed_id == "scene7"
    c.stop_bed(1000, 3000)
    assert [b.bed_id for b in c.fading_beds] == ["bed1"] and c.bed is None


def test_the_clock_wakes_to_forget_a_faded_bed_but_not_while_paused_past_it():
    c = channel()
    c.set_bed(bed(), 0)
    c.stop_bed(1000, 5000)  # fades out 5500-6500
    assert c.next_deadline_ms() == 6500
    c.pause(5000)  # at 5500: the fade stands still
    assert c.next_deadline_ms() is None
