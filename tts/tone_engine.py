"""A fast, deterministic engine for tests and demos: no model, just tones (each sentence a glide).

The same text always gives the same samples; the length grows with the text,
so timelines look like speech. Markers let tests trigger failures and stalls.
"""

import asyncio
import zlib

import numpy as np

from broadcaster.errors import GenerationError

from .engine import Pcm, TtsEngine

SAMPLE_RATE = 22050


class ToneEngine(TtsEngine):
    name = "tone"
    parallelism = 64  # it only sleeps; many channels may wait on it at once
    sample_rate = SAMPLE_RATE

    def __init__(self, ms_per_char: int = 55, delay_ms: int = 0, fail_marker: str = "", stall_marker: str = ""):
        self.ms_per_char = ms_per_char
        self.delay_ms = delay_ms
        self.fail_marker = fail_marker
        self.stall_marker = stall_marker

    async def synthesize(self, text: str) -> Pcm:
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)
        if self.fail_marker and self.fail_marker in text:
            raise GenerationError(f"tone engine was told to fail on {text!r}")
        if self.stall_marker and self.stall_marker in text:
            await asyncio.Event().wait()
        return Pcm(self.render(text), SAMPLE_RATE)

    def variant(self, speaker: int | None, speed: float) -> "ToneEngine":
        """Speed only: its sentences last 1/speed as long."""
        return ToneEngine(max(1, round(self.ms_per_char / speed)), self.delay_ms, self.fail_marker, self.stall_marker)

    def render(self, text: str) -> np.ndarray:
        duration_ms = max(200, len(text) * self.ms_per_char)
        count = duration_ms * SAMPLE_RATE // 1000
        start_hz = 220 + zlib.crc32(text.encode()) % 440
        t = np.arange(count) / SAMPLE_RATE
        # A glide up an octave over the sentence, with a second, inharmonic one above it: any stretch
        # says where in the sentence it is, and no stretch looks like itself a period later, so a
        # test can find in recorded output exactly which moment is playing.
        phase = 2 * np.pi * start_hz * (t + t * t / (2 * t[-1]))
        wave = (np.sin(phase) + 0.7 * np.sin(1.41 * phase + 1.0)) / 1.7
        envelope = np.minimum(1.0, np.minimum(t, t[::-1]) * 50)  # 20 ms fades: no clicks
        return (wave * envelope * 8000).astype(np.int16)
