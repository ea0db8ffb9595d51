"""Rendering the timeline for the live stream."""

import numpy as np

from broadcaster.core.playout import Placed, render

RATE = 1000  # one sample per millisecond keeps the arithmetic readable


def test_silence_where_nothing_is_placed():
    """A window with no audio is all zeros of the right length."""
    assert render([], 0, 250, RATE).tolist() == [0] * 250


def test_chunk_lands_at_its_start_time():
    """A chunk's samples appear exactly where its start time falls in the window."""
    chunk = Placed(100, np.arange(1, 51, dtype=np.int16))
    out = render([chunk], 80, 180, RATE)
    assert out[:20].tolist() == [0] * 20 and out[20:70].tolist() == list(range(1, 51)) and not out[70:].any()


def test_consecutive_windows_join_without_gaps_or_repeats():
    """Rendering in slices gives the same samples as rendering at once."""
    chunk = Placed(37, np.arange(1, 301, dtype=np.int16))
    whole = render([chunk], 0, 400, RATE)
    sliced = np.concatenate([render([chunk], t, t + 64, RATE) for t in range(0, 400, 64)])[:400]
    assert np.array_equal(whole, sliced)


def test_window_inside_a_chunk_takes_its_middle():
    """A late window starts mid-chunk at the exact sample."""
    chunk = Placed(0, np.arange(1000, dtype=np.int16))
    assert render([chunk], 500, 510, RATE).tolist() == list(range(500, 510))
