"""The lead follows what listeners report needing, for an audience of about their size, within the
configured floor and ceiling."""

import pytest

from broadcaster.core.channel import Channel
from broadcaster.core.lead import KEEP_CHUNKS, KEEP_SAMPLES, MARGIN_MS, SAMPLE_AGE_MS, LeadTuner

from .test_channel import CFG, generate, make_request

CROWD = 1000


def tuner_with_needs(needs: list[int], audience: int = CROWD, now: int = 10_000) -> LeadTuner:
    tuner = LeadTuner(500, 3000)
    tuner.placed("c1", now, now + 500, audience)
    for need in needs:
        tuner.ready("c1", now + need, now)
    return tuner


def test_an_audience_nothing_is_known_of_starts_at_the_starting_lead_and_a_millisecond_a_listener() -> None:
    """Counted from the least audience of its band: a crowd fetching one chunk at once takes longer."""
    tuner = LeadTuner(500, 3000)
    assert [tuner.lead_ms(0, n) for n in (1, 5, 8, CROWD)] == [501, 504, 508, 500 + 512]
    assert tuner.lead_ms(0, 5000) == 3000  # the ceiling


def test_a_fast_audience_keeps_the_floor() -> None:
    assert tuner_with_needs([40, 80, 120, 90]).lead_ms(10_000, CROWD) == 500


def test_a_slow_audience_raises_the_lead_to_its_high_quantile_plus_a_margin() -> None:
    """A thousand listeners fetching at once: needs spread over 0.1-2 s; all but the slowest 5% covered."""
    needs = [100 + 2 * k for k in range(1000)]  # 100 .. 2098 ms
    lead = tuner_with_needs(needs).lead_ms(10_000, CROWD)
    assert lead == needs[949] + MARGIN_MS
    assert sum(need <= lead for need in needs) >= 950


def test_the_ceiling_bounds_the_lead_and_each_report() -> None:
    tuner = tuner_with_needs([10_000_000])  # a wild (or hostile) report
    assert tuner.lead_ms(10_000, CROWD) == 3000
    assert tuner.ready("c1", -10_000_000, 10_000) == 0  # from before its placement: needed nothing


def test_needs_count_for_audiences_of_about_their_size() -> None:
    """A crowd that leaves takes its needs with it; the crowd's size coming back brings them back."""
    tuner = tuner_with_needs([2000] * 10, audience=1000)
    assert tuner.lead_ms(10_000, 1000) == 2150
    assert tuner.lead_ms(10_000, 300) == 2150  # within a band of the crowd's
    assert tuner.lead_ms(10_000, 5) == 504  # the game master's table after the crowd left: not measured
    assert tuner.lead_ms(10_000 + 3_600_000, 1000) == 2150  # an hour later, the same crowd


def test_reports_for_unknown_or_forgotten_chunks_count_for_nothing() -> None:
    tuner = LeadTuner(500, 3000)
    assert tuner.ready("never-placed", 5000, 5000) is None
    for k in range(KEEP_CHUNKS + 1):
        tuner.placed(f"c{k}", k, k + 500, CROWD)
    assert tuner.ready("c0", 10_000, 10_000) is None  # the oldest placement was forgotten
    assert tuner.ready(f"c{KEEP_CHUNKS}", KEEP_CHUNKS + 1000, 10_000) == 1000
    assert tuner.lead_ms(10_000, CROWD) == 1000 + MARGIN_MS


def test_only_chunks_placed_within_the_lead_are_measured() -> None:
    """A sentence placed seconds ahead had time to spare: its audio's delay says nothing of the lead."""
    tuner = LeadTuner(500, 3000)
    tuner.placed("ahead", 0, 4000, CROWD)
    tuner.placed("at-lead", 0, 500, CROWD)
    assert tuner.ready("ahead", 2500, 3000) is None
    assert tuner.ready("at-lead", 900, 3000) == 900
    assert tuner.lead_ms(3000, CROWD) == 900 + MARGIN_MS


def test_only_the_latest_reports_count() -> None:
    """A slow burst is outweighed once as many fast reports have come after it."""
    tuner = tuner_with_needs([2500] * KEEP_SAMPLES + [100] * (KEEP_SAMPLES // 2))
    assert tuner.lead_ms(10_000, CROWD) == 2650  # half of the kept reports are still the slow ones
    for _ in range(KEEP_SAMPLES // 2):
        tuner.ready("c1", 10_100, 10_000)
    assert tuner.lead_ms(10_000, CROWD) == 500


def test_old_needs_are_forgotten() -> None:
    tuner = tuner_with_needs([2000] * 10)
    tuner.placed("c2", 20_000, 22_000, CROWD)  # within the lead of 2150
    tuner.ready("c2", 20_100, 20_100)
    assert tuner.lead_ms(20_100, CROWD) == 2150  # the slow reports still count
    assert tuner.lead_ms(10_000 + SAMPLE_AGE_MS + 1, CROWD) == 500  # the one recent report needed 100 ms


def test_floor_above_ceiling_is_refused() -> None:
    with pytest.raises(ValueError, match="floor <= start <= ceiling"):
        LeadTuner(1000, 500)


def test_the_channel_places_a_new_stream_at_its_current_lead() -> None:
    """The runtime sets the measured lead; the first chunk starts that far ahead of the moment it is ready,
    and the next request goes on the air that long before the cursor reaches it."""
    channel = Channel("table", CFG)
    channel.lead_ms = 2000
    first, second = make_request("Hello."), make_request("Again.")
    channel.submit(first, 0)
    channel.submit(second, 0)
    generate(channel, first, [1000], now=100)
    assert first.chunks[0].starts_at_ms == 2100
    generate(channel, second, [1000], now=200)
    assert not second.chunks[0].scheduled  # the first is still far from its end
    # the second is due at 2100 + 1000 + 600 = 3700 and goes on the air one lead (2000 ms) before
    assert channel.next_deadline_ms() == 1700
    channel.tick(1700)
    assert second.chunks[0].starts_at_ms == 3700


def test_a_few_listeners_close_by_bring_the_lead_down_from_its_start_to_their_need() -> None:
    """Unmeasured, an audience gets the starting lead (and a millisecond for each listener); once its
    listeners report needing little, the lead comes down to their need and the margin, never under the floor."""
    tuner = LeadTuner(200, 3000, start_ms=500)
    assert tuner.lead_ms(0, 8) == 508
    tuner.placed("c1", 1000, 1500, 8)
    for need in (60, 75, 70, 65, 90, 70, 68, 73):
        tuner.ready("c1", 1000 + need, 1100)
    assert tuner.lead_ms(1100, 8) == 90 + MARGIN_MS
    fast = LeadTuner(200, 3000, start_ms=500)
    fast.placed("c1", 1000, 1500, 8)
    fast.ready("c1", 1001, 1100)
    assert fast.lead_ms(1100, 8) == 200  # the floor
    assert fast.lead_ms(1100, 1000) == 500 + 512  # a crowd nothing is known of starts higher


def test_a_start_outside_floor_and_ceiling_is_refused() -> None:
    with pytest.raises(ValueError, match="floor <= start <= ceiling"):
        LeadTuner(200, 3000, start_ms=100)
