"""Renders a window of a channel's timeline as PCM: what the live stream plays (pure).

Given the chunks placed on the timeline and their samples, `render` returns
the mono samples for [start_ms, start_ms + duration) at one sample rate:
each chunk's audio where it sounds, silence elsewhere. Sample positions are
computed from absolute times, so consecutive windows join without drift.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Placed:
    starts_at_ms: int
    samples: np.ndarray  # int16 mono at the render rate


def sample_index(time_ms: int, rate: int) -> int:
    return time_ms * rate // 1000


def render(placed: list[Placed], start_ms: int, end_ms: int, rate: int) -> np.ndarray:
    first, last = sample_index(start_ms, rate), sample_index(end_ms, rate)
    out = np.zeros(last - first, dtype=np.int16)
    for item in placed:
        begin = sample_index(item.starts_at_ms, rate)
        lo, hi = max(begin, first), min(begin + len(item.samples), last)
        if lo < hi:
            out[lo - first:hi - first] = item.samples[lo - begin:hi - begin]
    return out


