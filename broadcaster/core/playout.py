"""Renders a window of a channel's timeline as PCM: what the live stream plays (pure).

Given the chunks placed on the timeline and their samples, `render` returns
the samples for [start_ms, end_ms) in one format (rate and channels):
each chunk's audio where it sounds, silence elsewhere. Sample positions are
computed from absolute times, so consecutive windows join without drift.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Placed:
    starts_at_ms: int
    samples: np.ndarray  # int16 at the render rate, shape (n, channels)


def sample_index(time_ms: int, rate: int) -> int:
    return time_ms * rate // 1000


def render(placed: list[Placed], start_ms: int, end_ms: int, rate: int, channels: int = 1) -> np.ndarray:
    first, last = sample_index(start_ms, rate), sample_index(end_ms, rate)
    out = np.zeros((last - first, channels), dtype=np.int16)
    for item in placed:
        begin = sample_index(item.starts_at_ms, rate)
        lo, hi = max(begin, first), min(begin + len(item.samples), last)
        if lo < hi:
            out[lo - first : hi - first] = item.samples[lo - begin : hi - begin]
    return out


def convert(samples: np.ndarray, from_rate: int, to_rate: int, channels: int) -> np.ndarray:
    """Any chunk in the render format: (n, channels) at `to_rate`.

    Channels are duplicated or averaged; the rate changes by linear interpolation,
    which is clean for the usual 22.05 to 44.1 kHz doubling of speech.
    """
    frames = samples.reshape(len(samples), -1).astype(np.float32)
    if frames.shape[1] != channels:
        frames = np.repeat(frames.mean(axis=1, keepdims=True), channels, axis=1)
    if from_rate != to_rate and len(frames):
        count = len(frames) * to_rate // from_rate
        positions = np.arange(count) * (from_rate / to_rate)
        frames = np.stack([np.interp(positions, np.arange(len(frames)), frames[:, c]) for c in range(channels)], axis=1)
    return np.clip(np.round(frames), -32768, 32767).astype(np.int16)
