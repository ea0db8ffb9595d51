"""Rendering the timeline for the live stream, and converting chunks to its format."""

import numpy as np

from broadcaster.core.playout import Placed, convert, render

RATE = 1000  # one sample per millisecond keeps the arithmetic readable


def mono(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int16).reshape(-1, 1)


def test_silence_where_nothing_is_placed():
    """A window with no audio is all zeros of the right length and channel count."""
    assert render([], 0, 250, RATE, channels=2).shape == (250, 2)
    assert not render([], 0, 250, RATE).any()


def test_chunk_lands_at_its_start_time():
    """A chunk's samples appear exactly where its start time falls in the window."""
    out = render([Placed(100, mono(range(1, 51)))], 80, 180, RATE)[:, 0]
    assert out[:20].tolist() == [0] * 20 and out[20:70].tolist() == list(range(1, 51)) and not out[70:].any()


def test_consecutive_windows_join_without_gaps_or_repeats():
    """Rendering in slices gives the same samples as rendering at once."""
    chunk = Placed(37, mono(range(1, 301)))
    whole = render([chunk], 0, 400, RATE)
    sliced = np.concatenate([render([chunk], t, t + 64, RATE) for t in range(0, 400, 64)])[:400]
    assert np.array_equal(whole, sliced)


def test_window_inside_a_chunk_takes_its_middle():
    """A late window starts mid-chunk at the exact sample."""
    assert render([Placed(0, mono(range(1000)))], 500, 510, RATE)[:, 0].tolist() == list(range(500, 510))


def test_mono_speech_becomes_stereo_at_twice_the_rate():
    """22.05 kHz mono doubles to 44.1 kHz stereo: both channels equal, original samples kept."""
    speech = np.array([0, 100, 200, 300], dtype=np.int16)
    out = convert(speech, 22050, 44100, 2)
    assert out.shape == (8, 2) and np.array_equal(out[:, 0], out[:, 1])
    assert out[::2, 0].tolist() == [0, 100, 200, 300] and out[1, 0] == 50


def test_stereo_is_averaged_to_mono():
    """Downmixing averages the channels."""
    assert convert(np.array([[100, 300], [-50, 50]], dtype=np.int16), 8000, 8000, 1)[:, 0].tolist() == [200, 0]
