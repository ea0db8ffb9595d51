"""The TTS engine interface and the audio it produces.

Engines turn one sentence into mono 16-bit PCM. They must never block the
event loop: synthesis runs in a worker thread (Piper) or is cheap (tone).
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from broadcaster.errors import GenerationError


@dataclass(frozen=True)
class Pcm:
    samples: np.ndarray  # int16: shape (n,) for mono, (n, channels) otherwise
    sample_rate: int

    @property
    def channels(self) -> int:
        return 1 if self.samples.ndim == 1 else self.samples.shape[1]

    @property
    def duration_ms(self) -> int:
        return round(len(self.samples) * 1000 / self.sample_rate)

    def trimmed(self, start_ms: int) -> "Pcm":
        first = min(len(self.samples), start_ms * self.sample_rate // 1000)
        return Pcm(self.samples[first:], self.sample_rate)


class TtsEngine(ABC):
    name: str
    sample_rate: int
    parallelism: int = 1  # sentences it can usefully synthesize at once

    @abstractmethod
    async def synthesize(self, text: str) -> Pcm:
        """Speak one sentence; raise GenerationError if it cannot be done."""

    def variant(self, speaker: int | None, speed: float) -> "TtsEngine":
        """The same voice with another speaker and speed, sharing what is loaded ([tts.voices])."""
        raise GenerationError(f"the {self.name} engine has no speakers or speeds to choose from")

    async def idle(self) -> None:  # noqa: B027 (optional hook; doing nothing is right for most engines)
        """Called when no sentence is waiting: a chance to give memory back. Default: nothing."""

    async def close(self) -> None:  # noqa: B027
        """Release threads or models; the default engine holds none."""
