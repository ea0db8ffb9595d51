"""`broadcaster listen --out`: what a headless listener heard, written as one WAV file."""

from pathlib import Path

import numpy as np
import soundfile

from broadcaster.client import Heard, HeardChunk
from tts.engine import Pcm


def tone(value: int, seconds: float, rate: int, channels: int) -> Pcm:
    shape = (round(seconds * rate),) if channels == 1 else (round(seconds * rate), channels)
    return Pcm(np.full(shape, value, dtype=np.int16), rate)


def heard(*chunks: tuple[int, Pcm], joined_at_ms: int | None = None) -> Heard:
    result = Heard()
    for i, (starts_at_ms, pcm) in enumerate(chunks):
        result.chunks[f"c{i}"] = HeardChunk(f"c{i}", "r", i, starts_at_ms, f"chunk {i}", pcm=pcm)
    result.joined_at_ms = joined_at_ms  # the server's clock when the snapshot came
    return result


def test_narration_and_tracks_are_written_in_one_format(tmp_path: Path):
    """22.05 kHz mono narration and a 44.1 kHz stereo track land in one 44.1 kHz stereo file, each at its place."""
    out = tmp_path / "heard.wav"
    heard((0, tone(1000, 1.0, 22050, 1)), (1500, tone(2000, 1.0, 44100, 2))).to_wav(out)
    samples, rate = soundfile.read(out, dtype="int16", always_2d=True)
    assert rate == 44100 and samples.shape == (round(2.5 * 44100), 2)
    assert (samples[:44000] == 1000).all()  # the narration, upmixed
    assert not samples[44200:66000].any()  # the gap between them
    assert (samples[66200:] == 2000).all()  # the track


def test_only_what_was_heard_after_joining_is_written(tmp_path: Path):
    """A listener joining mid-chunk writes from its join offset; a chunk that ended before it joined is left out."""
    out = tmp_path / "heard.wav"
    heard(
        (0, tone(3000, 0.5, 22050, 1)),
        (1000, tone(1000, 1.0, 22050, 1)),
        (2500, tone(2000, 0.5, 22050, 1)),
        joined_at_ms=1600,
    ).to_wav(out)
    samples, rate = soundfile.read(out, dtype="int16", always_2d=True)
    assert rate == 22050 and samples.shape == (round(1.4 * 22050), 1)
    assert (samples[: round(0.4 * 22050)] == 1000).all()  # the rest of the chunk that was sounding at the join
    assert not (samples == 3000).any()  # the chunk that had ended: not written
    assert (samples[round(0.9 * 22050) :] == 2000).all()
