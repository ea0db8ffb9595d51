"""Making a bed from the music folder: what a producer asks for, checked, and its tracks made ready.

A bed is a file or a folder of files under the music folder. Each file is decoded and leveled
as a queued track is (tts/tracks.py), cut into segments, and every segment stored as a chunk
(FLAC, and MP3 made off the critical path), so that listeners fetch a bed's audio exactly as
they fetch the line's. Only then does the bed go on the air: its loop's layout (how long each
track is) must be known before anyone can be told where in it the channel is.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

from broadcaster.core.bed import Bed, BedTrack, Segment
from broadcaster.core.ids import new_id
from broadcaster.core.model import Request
from broadcaster.core.titles import one_line
from broadcaster.errors import BadInput, NotFound
from tts.tracks import TrackInfo

from .generator import ChunkMaker

MAX_TRACKS = 20  # files in one bed folder
KEYS = {"path", "folder", "shuffle", "volume", "duck_db", "fade_ms"}
DEFAULT_VOLUME = 0.5  # a bed sits under the voice, even between sentences
DEFAULT_DUCK_DB = -12.0
DEFAULT_FADE_MS = 2000
MAX_FADE_MS = 30_000

Decode = Callable[[str, str, Path, str], Awaitable[TrackInfo]]  # (channel, request id, file, fallback title)


@dataclass(frozen=True)
class BedRequest:
    """What a producer asked for, checked: the files in play order (before any shuffle) and the settings."""

    source: str
    files: tuple[Path, ...]
    shuffle: bool
    volume: float
    duck_db: float
    fade_ms: int


def bed_request(body: dict[str, Any], music_root: Path) -> BedRequest:
    """Checks a PUT /bed body; BadInput (400) or NotFound (404) names what is wrong."""
    unknown = sorted(set(body) - KEYS)
    if unknown:
        raise BadInput(f"expected only {sorted(KEYS)} in a bed, got {unknown[:5]}")
    if ("path" in body) == ("folder" in body):
        raise BadInput('expected exactly one of "path" (a file) or "folder" under the music folder')
    shuffle = body.get("shuffle", False)
    if not isinstance(shuffle, bool) or (shuffle and "folder" not in body):
        raise BadInput('expected "shuffle" to be true or false, and only with a "folder"')
    source = body.get("path", body.get("folder"))
    files = (music_file(music_root, source),) if "path" in body else _folder(music_root, source)
    return BedRequest(
        source,
        files,
        shuffle,
        _number(body, "volume", DEFAULT_VOLUME, 0.0, 1.0),
        _number(body, "duck_db", DEFAULT_DUCK_DB, -60.0, 0.0),
        fade_ms(body, DEFAULT_FADE_MS),
    )


def fade_ms(body: dict[str, Any], default: int) -> int:
    value = body.get("fade_ms", default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FADE_MS:
        raise BadInput(f'expected "fade_ms" to be a whole number from 0 to {MAX_FADE_MS}, got {value!r}'[:200])
    return value


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadInput(f'expected "{key}" to be a number from {low:g} to {high:g}, got {value!r}'[:200])
    return float(value)


MAX_PATH_CHARS = 1000


def _inside(root: Path, relative: object, what: str) -> Path:
    if not isinstance(relative, str) or not relative or "\x00" in relative or len(relative) > MAX_PATH_CHARS:
        raise BadInput(f'expected "{what}": a name inside the music folder, at most {MAX_PATH_CHARS} characters')
    root = root.resolve()
    try:
        candidate = (root / relative).resolve()
    except (OSError, RuntimeError):  # a name too long for the file system, a symlink loop
        raise NotFound(f"no {what} {relative[:100]!r} in the music folder") from None
    if root != candidate and root not in candidate.parents:
        raise NotFound(f"no {what} {relative[:100]!r} in the music folder")
    return candidate


def is_there(path: Path, kind: str) -> bool:
    """Path.is_file/is_dir, but a name the file system cannot even look up (too long) is simply not there."""
    try:
        return path.is_file() if kind == "file" else path.is_dir()
    except OSError:
        return False


def music_file(root: Path, relative: object) -> Path:
    """A file inside the music folder `root`; anything else is refused."""
    path = _inside(root, relative, "path")
    if not is_there(path, "file"):
        raise NotFound(f"no file {str(relative)[:100]!r} in the music folder")
    return path


def _folder(root: Path, relative: object) -> tuple[Path, ...]:
    folder = _inside(root, relative, "folder")
    if not is_there(folder, "dir"):
        raise NotFound(f"no folder {str(relative)[:100]!r} in the music folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise BadInput(f"expected audio files in {str(relative)[:100]!r}, found none")
    if len(files) > MAX_TRACKS:
        raise BadInput(f"expected at most {MAX_TRACKS} files in a bed folder, found {len(files)}")
    return tuple(files)


class BedMaker:
    """Turns a checked BedRequest into a Bed whose every segment is stored."""

    def __init__(self, decode: Decode, forget: Callable[[str], Awaitable[None]], rng: Random):
        self.decode, self.forget, self.rng = decode, forget, rng

    async def make(self, channel: str, wanted: BedRequest, maker: ChunkMaker, now_ms: int) -> Bed:
        tracks: list[BedTrack] = []
        try:
            for path in wanted.files:
                tracks.append(await self._track(channel, path, maker, now_ms))
        except BaseException:
            for track in tracks:
                await asyncio.shield(self.forget(track.request_id))
            raise
        if wanted.shuffle:
            self.rng.shuffle(tracks)
        return Bed(new_id(), wanted.source, tuple(tracks), 0, wanted.volume, wanted.duck_db, fade_in_ms=wanted.fade_ms)

    async def _track(self, channel: str, path: Path, maker: ChunkMaker, now_ms: int) -> BedTrack:
        request_id = new_id()
        try:
            info = await self.decode(channel, request_id, path, path.stem or "Untitled")
            title = one_line(info.title) or "Untitled"
            request = Request(request_id, channel, title, [title] * info.segments, now_ms, kind="track")
            segments = []
            for seq in range(info.segments):
                chunk = await maker.make(request, seq)
                segments.append(Segment(chunk.chunk_id, chunk.duration_ms))
        except BaseException:
            await asyncio.shield(self.forget(request_id))
            raise
        return BedTrack(request_id, title, tuple(segments))


@dataclass(frozen=True)
class Scene:
    """A bed the console offers: a folder or a file, named as PUT /bed takes it."""

    name: str
    kind: str  # "folder" or "path"
    relative: str  # under the music folder


def scenes(music_root: Path, channel: str, ambience: str) -> tuple[str | None, list[Scene]]:
    """The folders and files of the channel's ambience folder (music/<channel>/<ambience>, else
    music/<ambience>): where they are (under the music folder) and what they are, sorted by name."""
    root = music_root.resolve()
    for candidate in (root / channel / ambience, root / ambience):
        folder = candidate.resolve()
        if folder.is_dir() and (folder == root or root in folder.parents):
            break
    else:
        return None, []
    found = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
        if entry.name.startswith("."):
            continue
        kind = "folder" if entry.is_dir() else "path" if entry.is_file() else None
        if kind is not None:
            found.append(Scene(entry.stem if kind == "path" else entry.name, kind, str(entry.relative_to(root))))
    return str(folder.relative_to(root)), found


def tracks_of(bed: Bed | None, fading: tuple[Bed, ...]) -> set[str]:
    """The stored tracks these beds play: their audio must be kept."""
    return {track.request_id for b in (bed, *fading) if b is not None for track in b.tracks}
