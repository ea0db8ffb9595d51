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


def test_a_pause_is_written_as_the_silence_it_was_and_the_cut_chunk_goes_on_where_it_stopped(tmp_path: Path):
    """A ramp chunk at 0-1000 ms, paused at 400 and resumed at 1400: 400 ms of it, 1 s of silence, then the
    rest from the very next sample; a later chunk moves with it."""
    out = tmp_path / "heard.wav"
    ramp = Pcm(np.arange(8000, dtype=np.int16), 8000)
    listened = heard((0, ramp), (1500, tone(500, 0.5, 8000, 1)), joined_at_ms=0)
    for entry in listened.chunks.values():
        entry.duration_ms = 1000 if entry.chunk_id == "c0" else 500
        entry.resumed(400, 1400)
    assert listened.chunks["c0"].starts_at_ms == 1000 and listened.chunks["c0"].from_ms == 1400
    listened.to_wav(out)
    samples, _ = soundfile.read(out, dtype="int16", always_2d=True)
    samples = samples[:, 0]
    assert list(samples[:3]) == [0, 1, 2] and samples[3199] == 3199  # 400 ms heard
    assert not samples[3200:11200].any()  # the pause
    assert samples[11200] == 3200 and samples[15999] == 7999  # from the very next sample
    assert (samples[20000:24000] == 500).all()  # the later chunk, 1 s later than announced at first
