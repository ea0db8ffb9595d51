"""Test audio made at test time with the bundled ffmpeg: nothing binary is committed."""

import subprocess
from pathlib import Path

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
