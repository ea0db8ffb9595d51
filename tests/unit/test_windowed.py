"""Windowed decoding stitches windows into exactly what one run makes, with windows of bounded size."""

import numpy as np
import pytest

from broadcaster.config import config_from_dict
from broadcaster.errors import BadInput, GenerationError
from tts.windowed import WindowedSession

HOP = 4  # samples per frame
RADIUS = 5  # frames on each side that a sample depends on: less than the overlap


class MovingSumDecoder:
    """Like a convolutional decoder: each step of its input becomes `hop` steps that depend on the
    input's neighbours within `radius`, with zeros beyond either end. Records the length of each run."""

    def __init__(self, hop: int = HOP, radius: int = RADIUS, source: str = "frames", scale: str | None = "speaker"):
        self.hop, self.radius, self.source, self.scale = hop, radius, source, scale
        self.runs: list[int] = []

    def run(self, names, feeds):
        frames = feeds[self.source]
        self.runs.append(frames.shape[-1])
        padded = np.pad(frames, ((0, 0), (0, 0), (self.radius, self.radius)))
        width = frames.shape[-1]
        summed = sum(padded[..., k : k + width] for k in range(2 * self.radius + 1))
        if self.scale:
            summed = summed * feeds[self.scale]
        return [np.repeat(summed.sum(axis=1, keepdims=True), self.hop, axis=-1)]


class PassThroughEncoder:
    def run(self, names, feeds):
        return [feeds["frames"], feeds["speaker"], np.array([7])]


LAYOUT = {
    "decoder_inputs": ["frames", "speaker"],
    "decoder_output": "audio",
    "other_outputs": ["durations"],
    "outputs": ["audio", "durations"],
}


def session(window: int, overlap: int = 8) -> tuple[WindowedSession, MovingSumDecoder]:
    decoder = MovingSumDecoder()
    return WindowedSession(PassThroughEncoder(), decoder, LAYOUT, window, overlap), decoder


@pytest.mark.parametrize("frames", [0, 1, 10, 99, 100, 101, 257, 1000])
def test_windows_put_together_equal_one_run_and_stay_within_window_and_overlaps(frames):
    feeds = {
        "frames": np.random.default_rng(frames).normal(size=(1, 3, frames)).astype(np.float32),
        "speaker": np.array([[[2.0]]], dtype=np.float32),
    }
    whole = MovingSumDecoder().run(None, feeds)[0]
    windowed, decoder = session(window=100)
    audio, durations = windowed.run(None, feeds)
    assert audio.shape == whole.shape == (1, 1, frames * HOP)
    np.testing.assert_allclose(audio, whole, rtol=1e-5, atol=1e-5)
    assert durations.tolist() == [7], "outputs the decoder does not make come from the first stage"
    assert max(decoder.runs) <= 100 + 2 * 8
    assert len(decoder.runs) == max(1, -(-frames // 100))
    assert max(decoder.runs) - min(decoder.runs) <= 2 * 8 + 1, "windows are of equal size, none left short"


def test_a_sentence_within_one_window_is_decoded_in_one_run():
    feeds = {"frames": np.ones((1, 2, 80), dtype=np.float32), "speaker": np.ones((1, 1, 1), dtype=np.float32)}
    windowed, decoder = session(window=100)
    windowed.run(["audio"], feeds)
    assert decoder.runs == [80]


def test_too_little_overlap_shows_at_the_seams():
    """The check above can fail: with less overlap than the decoder's reach, the windows differ."""
    feeds = {
        "frames": np.random.default_rng(1).normal(size=(1, 2, 300)).astype(np.float32),
        "speaker": np.ones((1, 1, 1), dtype=np.float32),
    }
    windowed, _ = session(window=100, overlap=RADIUS - 2)
    assert not np.allclose(windowed.run(None, feeds)[0], MovingSumDecoder().run(None, feeds)[0], atol=1e-3)


def random_feeds(frames: int) -> dict:
    return {
        "frames": np.random.default_rng(frames).normal(size=(1, 3, frames)).astype(np.float32),
        "speaker": np.array([[[2.0]]], dtype=np.float32),
    }


def two_part_session(back_overlap: float) -> tuple[WindowedSession, MovingSumDecoder]:
    """A front part making 2 steps per frame, and a back part reaching 3 of those steps (1.5 frames)."""
    back = MovingSumDecoder(hop=3, radius=3, source="middle", scale=None)
    layout = {**LAYOUT, "back_input": "middle"}
    return WindowedSession(
        PassThroughEncoder(),
        MovingSumDecoder(hop=2),
        layout,
        100,
        8,
        back=back,
        back_window_frames=10,
        back_overlap_frames=back_overlap,
    ), back


def in_one_run(feeds: dict) -> np.ndarray:
    middle = MovingSumDecoder(hop=2).run(None, feeds)[0]
    return MovingSumDecoder(hop=3, radius=3, source="middle", scale=None).run(None, {"middle": middle})[0]


@pytest.mark.parametrize("frames", [0, 1, 9, 10, 11, 99, 250])
def test_the_back_part_on_shorter_windows_still_equals_one_run(frames):
    feeds = random_feeds(frames)
    windowed, back = two_part_session(back_overlap=1.5)
    audio = windowed.run(["audio"], feeds)[0]
    assert audio.shape == (1, 1, frames * 6)
    np.testing.assert_allclose(audio, in_one_run(feeds), rtol=1e-5, atol=1e-5)
    assert max(back.runs) <= (10 + 2 * 1.5) * 2, "the back part's windows are 10 frames and their overlaps"


def test_too_little_overlap_for_the_back_part_shows_at_its_seams():
    feeds = random_feeds(99)
    windowed, _ = two_part_session(back_overlap=0.5)  # 1 step of the 3 it reaches
    assert not np.allclose(windowed.run(["audio"], feeds)[0], in_one_run(feeds), atol=1e-3)


def test_a_decoder_with_a_fractional_hop_is_reported():
    class Odd(MovingSumDecoder):
        def run(self, names, feeds):
            return [super().run(names, feeds)[0][..., :-1]]

    windowed = WindowedSession(PassThroughEncoder(), Odd(), LAYOUT, 100, 8)
    feeds = {"frames": np.ones((1, 1, 250), dtype=np.float32), "speaker": np.ones((1, 1, 1), dtype=np.float32)}
    with pytest.raises(GenerationError, match="whole number of samples per frame"):
        windowed.run(None, feeds)


@pytest.mark.parametrize("window_ms", [-1, 1, 499])
def test_a_window_too_short_to_be_useful_is_refused(window_ms):
    with pytest.raises(BadInput, match=rf"piper_window_ms of 0 \(off\) or at least 500, got {window_ms}"):
        config_from_dict({"tts": {"piper_window_ms": window_ms}})
    assert config_from_dict({"tts": {"piper_window_ms": 0}}).tts.piper_window_ms == 0
