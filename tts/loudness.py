"""Narration at the same loudness as music: a voice is measured once and leveled by a fixed gain.

Tracks are normalized one by one with ffmpeg's loudnorm. Doing that per
sentence would cost time on the way to first audio, and a TTS voice speaks at
a steady level anyway, so the voice is measured once (EBU R128 integrated
loudness of a calibration passage) and every chunk gets the same gain.
"""

import asyncio
import re
import subprocess

import numpy as np

from .encode import ffmpeg_exe
from .engine import Pcm, TtsEngine

CALIBRATION = (
    "This passage sets the level of the voice, so that narration and music "
    "sound equally loud. It is long enough to measure."
)


def measure_lufs(pcm: Pcm) -> float:
    """Integrated loudness (LUFS) of the samples, by ffmpeg's ebur128 filter."""
    args = [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostats",
        "-f",
        "s16le",
        "-ar",
        str(pcm.sample_rate),
        "-ac",
        str(pcm.channels),
        "-i",
        "pipe:0",
        "-af",
        "ebur128",
        "-f",
        "null",
        "-",
    ]
    err = subprocess.run(args, input=pcm.samples.astype("<i2").tobytes(), capture_output=True, timeout=60).stderr
    found = re.findall(rb"I:\s+(-?[\d.]+) LUFS", err)
    return float(found[-1]) if found else float("nan")


class LeveledEngine(TtsEngine):
    """Wraps an engine and applies a fixed gain (with clipping protection) to what it says."""

    def __init__(self, inner: TtsEngine, gain_db: float):
        self.inner = inner
        self.gain = 10 ** (gain_db / 20)
        self.gain_db = gain_db
        self.name = inner.name
        self.sample_rate = inner.sample_rate
        self.parallelism = inner.parallelism

    async def synthesize(self, text: str) -> Pcm:
        pcm = await self.inner.synthesize(text)
        scaled = np.clip(pcm.samples.astype(np.float32) * self.gain, -32768, 32767).astype(np.int16)
        return Pcm(scaled, pcm.sample_rate)

    async def idle(self) -> None:
        await self.inner.idle()

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


async def level(engine: TtsEngine, target_lufs: float, max_gain_db: float = 12) -> LeveledEngine:
    """Measure the engine's voice and return it leveled to `target_lufs`."""
    sample = await engine.synthesize(CALIBRATION)
    measured = await asyncio.to_thread(measure_lufs, sample)
    gain = 0.0 if np.isnan(measured) else max(-max_gain_db, min(max_gain_db, target_lufs - measured))
    return LeveledEngine(engine, gain)
