"""Music files as a chunk source: decode, normalize loudness, keep a lossless master, cut segments.

Any format the bundled ffmpeg decodes is accepted (mp3, flac, ogg/opus, m4a/aac,
wav...). A file is decoded once, strictly (a decoding error rejects it), with
EBU R128 loudness normalization to the configured target so music and
narration sit at the same level, into a 44.1 kHz stereo FLAC master next to
the request's chunks. Chunks are then read from the master segment by segment.
"""

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import soundfile

from broadcaster.errors import BadInput

from .encode import ffmpeg_exe
from .engine import Pcm

TRACK_RATE = 44100
TRACK_CHANNELS = 2
SEGMENT_MS = 5000
# loudnorm may hand a short file over as one huge frame, which the FLAC encoder refuses: re-frame it.
FLAC_FRAMES = "asetnsamples=n=4096:p=0"


class TrackRejected(BadInput):
    status = 422
    code = "not_audio"


@dataclass(frozen=True)
class TrackInfo:
    title: str
    artist: str | None
    samples: int

    @property
    def duration_ms(self) -> int:
        return round(self.samples * 1000 / TRACK_RATE)

    @property
    def segments(self) -> int:
        return max(1, -(-self.samples // segment_samples()))


def segment_samples() -> int:
    return SEGMENT_MS * TRACK_RATE // 1000


async def prepare_track(source: Path, master: Path, target_lufs: float, max_seconds: float,
                        fallback_title: str) -> TrackInfo:
    """Decode `source` into a normalized FLAC at `master`; raises TrackRejected with ffmpeg's reason."""
    tags = await read_tags(source)
    master.parent.mkdir(parents=True, exist_ok=True)
    part = master.with_suffix(".flac.part")
    try:
        samples = await _decode_into(source, part, target_lufs, max_seconds)
        await asyncio.to_thread(_fsync, part)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, master)
    title = tags.get("title") or fallback_title
    return TrackInfo(title=title[:200], artist=(tags.get("artist") or None), samples=samples)


async def _decode_into(source: Path, target: Path, target_lufs: float, max_seconds: float) -> int:
    """ffmpeg writes the normalized FLAC itself, so a long track never sits in memory; returns its length."""
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-xerror", "-y", "-i", str(source), "-vn",
            "-t", str(max_seconds + 1), "-af", f"loudnorm=I={target_lufs}:TP=-1.5:LRA=11,{FLAC_FRAMES}",
            "-ar", str(TRACK_RATE), "-ac", str(TRACK_CHANNELS), "-c:a", "flac", "-sample_fmt", "s16",
            "-f", "flac", str(target)]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    reason = err.decode(errors="replace").replace(str(source), "the file").strip().splitlines()
    frames = await asyncio.to_thread(_frames, target) if proc.returncode == 0 else 0
    if not frames:
        raise TrackRejected(f"expected an audio file ffmpeg can decode, got one it cannot: {' '.join(reason[-2:])[:300] or 'no audio'}")
    if frames > max_seconds * TRACK_RATE:
        raise TrackRejected(f"expected a track of at most {max_seconds:g} s, got a longer one")
    if frames < TRACK_RATE // 10:
        raise TrackRejected("expected at least 0.1 s of audio, got less")
    return frames


def _frames(path: Path) -> int:
    try:
        return soundfile.info(path).frames
    except (RuntimeError, OSError):  # soundfile raises RuntimeError for unreadable files
        return 0


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())  # durable before it is renamed into place, like chunk files


async def read_tags(source: Path) -> dict[str, str]:
    """Title and artist from the container's or the audio stream's tags (Ogg keeps them per stream)."""
    tags: dict[str, str] = {}
    for mapping in ("0", "0:s:a:0"):
        proc = await asyncio.create_subprocess_exec(
            ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "quiet", "-i", str(source), "-map_metadata", mapping,
            "-f", "ffmetadata", "pipe:1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        for line in out.decode(errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.lower() in ("title", "artist") and value.strip():
                tags.setdefault(key.lower(), value.strip())
    return tags


def read_segment(master: Path, seq: int) -> Pcm:
    size = segment_samples()
    samples, rate = soundfile.read(master, start=seq * size, frames=size, dtype="int16", always_2d=True)
    return Pcm(samples, rate)
