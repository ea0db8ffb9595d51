"""Windowed decoding stitches windows into exactly what one run makes, with windows of bounded size."""

import numpy as np
import pytest

from broadcaster.config import config_from_dict
from broadcaster.errors import BadInput, GenerationError
from tts.windowed import WindowedSession

HOP = 4  # samples per frame
RADIUS = 5  # frames on each side that a sample depends on: less than the overlap


class MovingSumDecoder:
    """Like a convolutional decoder: each frame becomes HOP samples that depend on its neighbours
    within RADIUS, with zeros beyond either end. Records the frames each run was given."""

    def __init__(self) -> None:
        self.runs: list[int] = []

    def run(self, names, feeds):  # noqa: ANN001, ANN201
        frames = feeds["frames"]
        self.runs.append(frames.shape[-1])
        padded = np.pad(frames, ((0, 0), (0, 0), (RADIUS, RADIUS)))
        width = frames.shape[-1]
        summed = sum(padded[..., k:k + width] for k in range(2 * RADIUS + 1)) * feeds["speaker"]
        return [np.repeat(summed.sum(axis=1, keepdims=True), HOP, axis=-1)]


class PassThroughEncoder:
    def run(self, names, feeds):  # noqa: ANN001, ANN201
        return [feeds["frames"], feeds["speaker"], np.array([7])]


LAYOUT = {"decoder_inputs": ["frames", "speaker"], "decoder_output": "audio", "other_outputs": ["durations"],
          "outputs": ["audio", "durations"]}


def session(window: int, overlap: int = 8) -> tuple[WindowedSession, MovingSumDecoder]:
    decoder = MovingSumDecoder()
    return WindowedSession(PassThroughEncoder(), decoder, LAYOUT, window, overlap), decoder


@pytest.mark.parametrize("frames", [0, 1, 10, 99, 100, 101, 257, 1000])
def test_windows_put_together_equal_one_run_and_stay_within_window_and_overlaps(frames):
    feeds = {"frames": np.random.default_rng(frames).normal(size=(1, 3, frames)).astype(np.float32),
             "speaker": np.array([[[2.0]]], dtype=np.float32)}
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
    feeds = {"frames": np.random.default_rng(1).normal(size=(1, 2, 300)).astype(np.float32),
             "speaker": np.ones((1, 1, 1), dtype=np.float32)}
    windowed, _ = session(window=100, overlap=RADIUS - 2)
    assert not np.allclose(windowed.run(None, feeds)[0], MovingSumDecoder().run(None, feeds)[0], atol=1e-3)


def test_a_decoder_with_a_fractional_hop_is_reported():
    class Odd(MovingSumDecoder):
        def run(self, names, feeds):  # noqa: ANN001, ANN201
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
