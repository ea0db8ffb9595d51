"""Test audio made at test time with the bundled ffmpeg: nothing binary is committed."""

import asyncio
import subprocess
from pathlib import Path

import numpy as np

from tts.encode import ffmpeg_exe


def tone(path: Path, seconds: float, freq: int = 440, *options: str, tags: dict[str, str] | None = None) -> Path:
    """A sine tone of `seconds` at `freq` Hz written to `path`; `options` are ffmpeg output options
    (codec, channels, filters), `tags` metadata such as title and artist."""
    metadata = [arg for key, value in (tags or {}).items() for arg in ("-metadata", f"{key}={value}")]
    source = f"sine=frequency={freq}:duration={seconds}:sample_rate=48000"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-hide_banner",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            source,
            *options,
            *metadata,
            str(path),
        ],
        check=True,
        timeout=60,
    )
    return path


def band_levels(pcm: np.ndarray, tone_hz: int, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Per 100 ms of `pcm`: the level of a tone (its bin) and of the tone engine's narration (everything
    from 200 Hz up)."""
    window = rate // 10
    frames = pcm[: len(pcm) // window * window].reshape(-1, window) * np.hanning(window)
    spectrum = np.abs(np.fft.rfft(frames, axis=1))
    freqs = np.fft.rfftfreq(window, 1 / rate)
    level = spectrum[:, np.argmin(np.abs(freqs - tone_hz))]
    voice = spectrum[:, freqs >= 200].max(axis=1)
    return level, voice


def inside(mask: np.ndarray, margin: int) -> np.ndarray:
    """The windows of `mask` at least `margin` windows from its edges."""
    kept = mask.copy()
    for shift in range(1, margin + 1):
        kept[shift:] &= mask[:-shift]
        kept[:-shift] &= mask[shift:]
    kept[:margin] = kept[-margin:] = False
    return kept


async def live_pcm(url: str, seconds: float, rate: int) -> np.ndarray:
    """`seconds` of a live MP3 stream as a player decodes it (the bundled ffmpeg): mono samples at `rate`."""
    player = await asyncio.create_subprocess_exec(
        ffmpeg_exe(), "-hide_banner", "-v", "error", "-t", str(seconds), "-i", url,
        "-f", "s16le", "-ac", "1", "-ar", str(rate), "-",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(player.communicate(), seconds + 60)
    return np.frombuffer(out, dtype="<i2").astype(np.float64)
