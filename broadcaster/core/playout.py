"""Renders a window of a channel's timeline as PCM: what the live stream plays (pure).

Given the chunks placed on the timeline and their samples, `render` returns
the samples for [start_ms, end_ms) in one format (rate and channels):
each chunk's audio where it sounds, silence elsewhere. Sample positions are
computed from absolute times, so consecutive windows join without drift.
"""

from dataclasses import dataclass

import numpy as np

from .bed import Bed


@dataclass(frozen=True)
class Placed:
    starts_at_ms: int
    samples: np.ndarray  # int16 at the render rate, shape (n, channels)


def sample_index(time_ms: int, rate: int) -> int:
    return time_ms * rate // 1000


def bed_gains(bed: Bed, duck: list[tuple[int, float]], first_ms: float, count: int, rate: int) -> np.ndarray:
    """The gain of `bed` at each of `count` samples from `first_ms`: its volume, its fades and the ducking
    (`duck`, from core/bed.py's duck_envelope), as every listener page applies them."""
    times = first_ms + np.arange(count) * (1000 / rate)
    gains = np.full(count, bed.volume)
    gains *= _ramp(times, bed.fades_in_at_ms, bed.fade_in_ms, 0.0, 1.0)
    if bed.fades_out_at_ms is not None:
        gains *= _ramp(times, bed.fades_out_at_ms, bed.fade_out_ms, 1.0, 0.0)
    if duck:
        gains *= np.interp(times, [at for at, _ in duck], [g for _, g in duck], left=1.0, right=1.0)
    return gains


def _ramp(times: np.ndarray, at_ms: int, length_ms: int, before: float, after: float) -> np.ndarray:
    if length_ms <= 0:
        return np.where(times <= at_ms, before, after)
    return np.interp(times, [at_ms, at_ms + length_ms], [before, after])


def mix(frame: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """`frame` (int16) with each (samples, gains) layer added, clipped to int16."""
    if not layers:
        return frame
    out = frame.astype(np.float32)
    for samples, gains in layers:
        out += samples.astype(np.float32) * gains[:, None]
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def render(placed: list[Placed], start_ms: int, end_ms: int, rate: int, channels: int = 1) -> np.ndarray:
    first, last = sample_index(start_ms, rate), sample_index(end_ms, rate)
    out = np.zeros((last - first, channels), dtype=np.int32)
    for item in placed:  # talk-over sounds over a track: what overlaps is added
        begin = sample_index(item.starts_at_ms, rate)
        lo, hi = max(begin, first), min(begin + len(item.samples), last)
        if lo < hi:
            out[lo - first : hi - first] += item.samples[lo - begin : hi - begin]
    return np.clip(out, -32768, 32767).astype(np.int16)


def ducked(samples: np.ndarray, duck: list[tuple[int, float]], first_ms: float, rate: int) -> np.ndarray:
    """`samples` (int16, from first_ms) under the ducking envelope `duck` (core/bed.py)."""
    if not duck or not len(samples):
        return samples
    times = first_ms + np.arange(len(samples)) * (1000 / rate)
    gains = np.interp(times, [at for at, _ in duck], [g for _, g in duck], left=1.0, right=1.0)
    return np.round(samples.astype(np.float32) * gains[:, None].astype(np.float32)).astype(np.int16)


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
