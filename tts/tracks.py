"""Music files as a chunk source: decode, normalize loudness, keep a lossless master, cut segments.

Uploads and the music folder are untrusted bytes, and ffmpeg picks its demuxer from a file's
content, not its name; some formats (playlists, manifests, concat lists) name other files or
URLs to read. So ffmpeg is handed the one file as an open descriptor, may open no other input
(`-protocol_whitelist fd`), and may only use the demuxers of the audio formats accepted below.
The length cap counts samples as they pass (atrim), since timestamps in a hostile file need not
advance; every decode also has a wall-clock timeout and an address-space cap (tts/children.py).

A file is decoded once, strictly, with EBU R128 loudness normalization to the configured target
so music and narration sit at the same level, into a 44.1 kHz stereo FLAC master. Chunks are then
read from the master segment by segment: as the track plays (files, db/audio_files.py), or all at
once when it is stored (the database, db/audio_database.py).
"""

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path

import soundfile

from broadcaster.errors import BadInput

from .children import Tail, spawn, stop
from .encode import ffmpeg_exe, flac_bytes
from .engine import Pcm

TRACK_RATE = 44100
TRACK_CHANNELS = 2
SEGMENT_MS = 5000
MIN_TAIL_MS = 50  # a last segment shorter than this joins the one before it
# loudnorm may hand a short file over as one huge frame, which the FLAC encoder refuses: re-frame it.
FLAC_FRAMES = "asetnsamples=n=4096:p=0"
# ffmpeg's demuxer names (a name matches any of a demuxer's aliases: "mov" is mp4 and m4a too).
ACCEPTED_FORMATS = {
    "mp3": "MP3",
    "flac": "FLAC",
    "ogg": "Ogg (Vorbis, Opus, FLAC)",
    "mov": "MP4/M4A (AAC, ALAC)",
    "wav": "WAV",
    "aiff": "AIFF",
    "aac": "AAC (ADTS)",
    "matroska": "Matroska/WebM",
}
ACCEPTED = ", ".join(ACCEPTED_FORMATS.values())
TAGS_BYTES = 64 * 1024  # ffmetadata output read for the title and artist; the rest is not wanted
TAGS_TIMEOUT_S = 10


class TrackRejected(BadInput):
    status = 422
    code = "not_audio"


@dataclass(frozen=True)
class DecodeLimits:
    max_seconds: float
    timeout_s: float
    memory_bytes: int | None = None


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
        return segment_count(self.samples)


def segment_samples() -> int:
    return SEGMENT_MS * TRACK_RATE // 1000


def segment_count(samples: int) -> int:
    """Whole segments, plus the remainder as its own segment unless it is too short to hear."""
    whole, rest = divmod(samples, segment_samples())
    return max(1, whole + (rest * 1000 >= MIN_TAIL_MS * TRACK_RATE))


def input_args() -> list[str]:
    """ffmpeg reads its standard input (the file, opened by us) and nothing else, as an accepted format."""
    return ["-protocol_whitelist", "fd", "-format_whitelist", ",".join(ACCEPTED_FORMATS), "-i", "fd:"]


async def prepare_track(
    source: Path, master: Path, target_lufs: float, limits: DecodeLimits, fallback_title: str
) -> TrackInfo:
    """Decode `source` into a normalized FLAC at `master`; raises TrackRejected with the reason.

    Cancelling it (the client left) kills ffmpeg and leaves no file behind."""
    master.parent.mkdir(parents=True, exist_ok=True)
    part = master.with_suffix(".flac.part")
    try:
        samples = await _decode_into(source, part, target_lufs, limits)
        tags = await read_tags(source, limits.memory_bytes)
        await asyncio.to_thread(_fsync, part)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, master)
    title = tags.get("title") or fallback_title
    return TrackInfo(title=title[:200], artist=(tags.get("artist") or None), samples=samples)


def decode_command(target: Path, target_lufs: float, max_seconds: float) -> list[str]:
    # asetpts: timestamps become the sample count, so a file whose timestamps stand still or jump
    # cannot confuse what follows; atrim stops after the cap (plus a second, to tell "too long").
    cap = int((max_seconds + 1) * TRACK_RATE)
    filters = (
        f"asetpts=N/SR/TB,aresample={TRACK_RATE},aformat=channel_layouts=stereo,atrim=end_sample={cap},"
        f"loudnorm=I={target_lufs}:TP=-1.5:LRA=11,aresample={TRACK_RATE},{FLAC_FRAMES}"
    )
    return [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-v",
        "error",
        "-xerror",
        "-y",
        *input_args(),
        "-vn",
        "-af",
        filters,
        "-ar",
        str(TRACK_RATE),
        "-ac",
        str(TRACK_CHANNELS),
        "-c:a",
        "flac",
        "-sample_fmt",
        "s16",
        "-f",
        "flac",
        str(target),
    ]


async def _decode_into(source: Path, target: Path, target_lufs: float, limits: DecodeLimits) -> int:
    """ffmpeg writes the normalized FLAC itself, so a long track never sits in memory; returns its length."""
    returncode, reason = await _run(decode_command(target, target_lufs, limits.max_seconds), source, limits)
    frames = await asyncio.to_thread(_frames, target) if returncode == 0 else 0
    if "not on whitelist" in reason:
        raise TrackRejected(
            f"expected an audio file in one of the accepted formats ({ACCEPTED}), got another kind of file"
        )
    if not frames:
        raise TrackRejected(
            f"expected an audio file in one of the accepted formats ({ACCEPTED}), got one that "
            f"does not decode: {_for_client(reason, target)[:300] or 'no audio'}"
        )
    if frames > limits.max_seconds * TRACK_RATE:
        raise TrackRejected(f"expected a track of at most {limits.max_seconds:g} s, got a longer one")
    if frames < TRACK_RATE // 10:
        raise TrackRejected("expected at least 0.1 s of audio, got less")
    return frames


_FFMPEG_CONTEXT = re.compile(r"\[[^\]]*@ 0x[0-9a-f]+\] ?")  # "[af#0:0 @ 0x55...] ": a heap address


def _for_client(reason: str, target: Path) -> str:
    """The last lines of ffmpeg's log, without what is the server's business: where it writes, addresses."""
    lines = reason.strip().replace(str(target), "the output").splitlines()
    return _FFMPEG_CONTEXT.sub("", " ".join(lines[-2:]))


async def _run(args: list[str], source: Path, limits: DecodeLimits) -> tuple[int, str]:
    """Run one decode of `source` within the limits; returns ffmpeg's exit code and the tail of its log."""
    tail = Tail()
    with open(source, "rb") as stdin:
        proc = await spawn(
            *args,
            memory_bytes=limits.memory_bytes,
            stdin=stdin,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    try:
        async with asyncio.timeout(limits.timeout_s):
            await tail.drain(proc.stderr)
            await proc.wait()
    except TimeoutError:
        raise TrackRejected(
            f"expected a file that decodes within {limits.timeout_s:g} s, got one that took longer"
        ) from None
    finally:
        await asyncio.shield(stop(proc))
    return proc.returncode, tail.text()


def _frames(path: Path) -> int:
    try:
        return soundfile.info(path).frames
    except (RuntimeError, OSError):  # soundfile raises RuntimeError for unreadable files
        return 0


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())  # durable before it is renamed into place, like chunk files


async def read_tags(source: Path, memory_bytes: int | None = None) -> dict[str, str]:
    """Title and artist from the container's or the audio stream's tags (Ogg keeps them per stream)."""
    tags: dict[str, str] = {}
    for mapping in ("0", "0:s:a:0"):
        args = [
            ffmpeg_exe(),
            "-hide_banner",
            "-nostdin",
            "-v",
            "quiet",
            *input_args(),
            "-map_metadata",
            mapping,
            "-f",
            "ffmetadata",
            "pipe:1",
        ]
        for key, value in ffmetadata_fields(await _metadata(args, source, memory_bytes)):
            if key.lower() in ("title", "artist") and value.strip():
                tags.setdefault(key.lower(), value.strip())
    return tags


def ffmetadata_fields(text: str) -> list[tuple[str, str]]:
    """The key=value entries of ffmpeg's ffmetadata output, its escapes undone: a backslash keeps the
    character after it (`=`, `;`, `#`, a backslash, or a line break inside a value)."""
    entries, current = [], ""
    for line in text.split("\n"):
        current += line
        if (len(current) - len(current.rstrip("\\"))) % 2:  # an escaped line break: the value goes on
            current = current[:-1] + "\n"
            continue
        entries.append(current)
        current = ""
    return [pair for entry in entries if not entry.startswith((";", "#")) and (pair := _entry(entry))]


def _entry(entry: str) -> tuple[str, str] | None:
    key: str | None = None
    current: list[str] = []
    chars = iter(entry)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(c)
    return None if key is None else (key, "".join(current))


async def _metadata(args: list[str], source: Path, memory_bytes: int | None) -> str:
    """The first TAGS_BYTES ffmpeg writes; empty if it does not finish in time."""
    with open(source, "rb") as stdin:
        proc = await spawn(
            *args,
            memory_bytes=memory_bytes,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    try:
        async with asyncio.timeout(TAGS_TIMEOUT_S):
            out = b""
            while len(out) < TAGS_BYTES and (data := await proc.stdout.read(TAGS_BYTES - len(out))):
                out += data
    except TimeoutError:
        out = b""
    finally:
        await asyncio.shield(stop(proc))
    return out.decode(errors="replace")


def read_segment(master: Path, seq: int, count: int) -> Pcm:
    """Segment `seq` of `count`; the last one runs to the end (a short tail folded into it)."""
    size = segment_samples()
    frames = size if seq < count - 1 else -1
    samples, rate = soundfile.read(master, start=seq * size, frames=frames, dtype="int16", always_2d=True)
    return Pcm(samples, rate)


def segment_flacs(master: Path, first: int, end: int, count: int) -> list[bytes]:
    """Segments `first` to `end` (excluded) of `count` as FLAC files, each as `read_segment` reads it."""
    return [flac_bytes(read_segment(master, seq, count)) for seq in range(first, end)]
