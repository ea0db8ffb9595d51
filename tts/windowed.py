"""Piper's decoder run window by window, so synthesis memory stops growing with the sentence.

Run whole, a Piper voice needs about 16 MB of working memory per second of
the sentence's speech (+233 MB for a 15.6-second sentence, docs/performance.md),
almost all of it in the decoder. `WindowedSession` runs the voice's first
stage (text to frames) whole, then the decoder on windows of `window_frames`
frames, each widened by OVERLAP_FRAMES on both sides so that every kept
sample sees the same neighbourhood it would in one run; only the window's
own samples are kept. Measured on the bundled voice, the output is identical
to the whole run's, sample for sample, from an overlap of 12 frames; 16
(0.19 s) leaves a margin for other voices.
The overlaps are computed twice: a sentence longer than one window costs
2 x 16 frames more decoding per window boundary. A sentence that fits in
one window is decoded in one run, as before.

Within each window, the decoder's last two stages (64 and 256 samples per
frame, nearly all of its working memory) run on shorter windows still,
BACK_WINDOW_FRAMES of the first part's output with BACK_OVERLAP_FRAMES on
each side; they see only about one frame on each side, so the short windows
cost little decoding twice. On the bundled voice that takes a 3 s window from
+55 to +14 MB, with the same samples, for about a tenth more decoding time
(docs/performance.md).

It stands in for the onnxruntime session inside `piper.PiperVoice`, which
keeps doing everything else (phonemes, scales, speaker, normalization). The
parts come from tts/voice_split.py, run once per voice file in a
process of its own; the result is cached under the data directory.
"""

import json
import logging
import math
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from broadcaster.errors import GenerationError

from .voice_split import BACK, DECODER, ENCODER, LAYOUT

log = logging.getLogger(__name__)

OVERLAP_FRAMES = 16
BACK_WINDOW_FRAMES = 60  # 0.7 s through the back part: +14 MB, where 3 s through the whole decoder take +55 MB
BACK_OVERLAP_FRAMES = 1.5  # identical output from 1 frame on the bundled voice
SPLIT_SCRIPT = Path(__file__).with_name("voice_split.py")
SPLIT_FORMAT = 2  # bump when voice_split.py writes something different
SPLIT_TIMEOUT_S = 300


def windowed(run: Callable[[np.ndarray], np.ndarray], frames: np.ndarray, window: int, overlap: int) -> np.ndarray:
    """`run` over equal windows of at most `window` frames (time is the last axis), each widened by
    `overlap` on both sides, with the middles of its outputs put end to end. Within one window: one run."""
    total = frames.shape[-1]
    if total <= window:
        return run(frames)
    step = -(-total // -(-total // window))  # equal windows: no short one at the end
    parts = []
    for start in range(0, total, step):
        low, high, stop = max(0, start - overlap), min(total, start + step + overlap), min(total, start + step)
        out = run(np.ascontiguousarray(frames[..., low:high]))
        hop = whole_hop(out, high - low)
        parts.append(out[..., (start - low) * hop : (stop - low) * hop])
    return np.concatenate(parts, axis=-1)


def whole_hop(out: np.ndarray, frames: int) -> int:
    hop, rest = divmod(out.shape[-1], frames)
    if rest:
        raise GenerationError(
            f"expected the decoder to make a whole number of samples per frame, got {out.shape[-1]} for {frames} frames"
        )
    return hop


class WindowedSession:
    """The `run(output_names, feeds)` of an onnxruntime session over the parts of a voice.

    `decoder` is the whole decoder, or its front part when `back` is given; the layout's `back_input`
    then names the tensor that passes between them.
    """

    def __init__(
        self,
        encoder: Any,
        decoder: Any,
        layout: dict,
        window_frames: int,
        overlap_frames: int = OVERLAP_FRAMES,
        back: Any = None,
        back_window_frames: int = BACK_WINDOW_FRAMES,
        back_overlap_frames: float = BACK_OVERLAP_FRAMES,
    ):
        self.encoder, self.decoder, self.back = encoder, decoder, back
        self.decoder_inputs: list[str] = layout["decoder_inputs"]  # the frames first
        self.decoder_output: str = layout["decoder_output"]
        self.back_input: str | None = layout.get("back_input") if back is not None else None
        self.other_outputs: list[str] = layout["other_outputs"]
        self.outputs: list[str] = layout["outputs"]
        self.window_frames, self.overlap_frames = window_frames, overlap_frames
        self.back_window_frames, self.back_overlap_frames = back_window_frames, back_overlap_frames

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        first = self.encoder.run(None, feeds)
        count = len(self.decoder_inputs)
        results = dict(zip(self.other_outputs, first[count:]))
        results[self.decoder_output] = self.decode(dict(zip(self.decoder_inputs, first[:count])))
        return [results[name] for name in output_names or self.outputs]

    def decode(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The decoder's output for all the frames, made a window at a time."""
        name = self.decoder_inputs[0]

        def one_window(frames: np.ndarray) -> np.ndarray:
            if self.back_input is None:
                return self.decoder.run([self.decoder_output], {**feeds, name: frames})[0]
            middle = self.decoder.run([self.back_input], {**feeds, name: frames})[0]
            return self._back_windows(middle, frames.shape[-1])

        return windowed(one_window, feeds[name], self.window_frames, self.overlap_frames)

    def _back_windows(self, middle: np.ndarray, frames: int) -> np.ndarray:
        """The back part over the front part's output for `frames` frames, on its own shorter windows."""
        steps = whole_hop(middle, frames) if frames else 1  # the front part's output steps per frame
        return windowed(
            lambda part: self.back.run([self.decoder_output], {self.back_input: part})[0],
            middle,
            self.back_window_frames * steps,
            math.ceil(self.back_overlap_frames * steps),
        )


def split_voice(model: Path, cache_dir: Path) -> Path:
    """The directory holding the parts of `model`, split now if the cache has none for this file."""
    stat = model.stat()
    out_dir = cache_dir / f"{model.stem}-{stat.st_size}-{stat.st_mtime_ns}-v{SPLIT_FORMAT}"
    if (out_dir / LAYOUT).is_file():
        return out_dir
    older = re.compile(re.escape(model.stem) + r"-\d+-\d+-v\d+")  # this voice's file before, or an older format
    for stale in cache_dir.glob(f"{model.stem}-*"):
        if older.fullmatch(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, str(SPLIT_SCRIPT), str(model), str(out_dir)],
            capture_output=True,
            text=True,
            timeout=SPLIT_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise GenerationError(f"expected the voice split to finish within {SPLIT_TIMEOUT_S} s, it did not") from None
    if done.returncode != 0 or not (out_dir / LAYOUT).is_file():
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise GenerationError(f"could not split voice {model.name} for windowed decoding: {reason}")
    log.info(
        "piper voice %s split for windowed decoding in %.1f s (once per voice file; cached in %s)",
        model.name,
        time.perf_counter() - started,
        out_dir,
    )
    return out_dir


def windowed_session(model: Path, cache_dir: Path, window_frames: int, options: Any) -> WindowedSession:
    """A WindowedSession over `model`'s parts, loaded with onnxruntime `options`."""
    import onnxruntime

    parts = split_voice(model, cache_dir)
    layout = json.loads((parts / LAYOUT).read_text(encoding="utf-8"))

    def load(name: str) -> Any:
        try:
            return onnxruntime.InferenceSession(
                str(parts / name), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types: a file it cannot load, say
            raise GenerationError(f"could not load {parts / name} for windowed decoding: {exc}") from exc

    back = load(BACK) if layout.get("back_input") else None
    return WindowedSession(load(ENCODER), load(DECODER), layout, window_frames, back=back)
