"""Where chunk and track audio lives: the interface, its read cache, and the choice between the stores.

Two stores keep the same promises:

- `FileAudioStore` (db/audio_files.py): files under `<data_dir>/audio`, for one server (the embedded
  default). A track keeps its normalized master, cut into chunks as it plays.
- `DatabaseAudioStore` (db/audio_database.py): rows in the database every process shares (PostgreSQL in
  a cluster), so any process on any machine serves any chunk and a channel's new owner has all its
  audio. A track is cut into its segments when it is decoded, so no process needs a master file.

The promises: a chunk's bytes are complete before anyone can read them, and its lossless FLAC is
stored before its row is inserted (the chunk is announced after that), so a reader never sees half
a chunk; committed bytes never change, so URLs stay immutable; a request's audio goes with
`delete_request`, and `orphans` finds audio no request row claims (a crash between the purge of
the rows and of the bytes, or during an upload).

Reads are cached: every listener fetches each chunk at about the same moment, so a thousand
requests for one chunk cost one load and share one copy in memory. Bytes never change once
committed, so the cache only has to forget audio that is deleted.
"""

import asyncio
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from tts.engine import Pcm

FORMATS = ("mp3", "flac")
CACHE_BYTES = 16 * 1024 * 1024  # the most recent chunks: minutes of audio, for every listener at once
_ID = re.compile(r"^[0-9a-f]{16,32}$")

Key = tuple[str, str, str]  # request id, chunk id, format


class AudioUnavailable(OSError):
    """The audio's store cannot be reached (the database is away); the audio itself may well exist."""


def check_ids(request_id: str, chunk_id: str | None = None, fmt: str | None = None) -> None:
    """Ids become file names: only hex ids, and known formats, get that far."""
    if not _ID.match(request_id) or (chunk_id is not None and not _ID.match(chunk_id)):
        raise ValueError(f"expected hex ids, got {request_id!r} {chunk_id!r}")
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"expected a format in {FORMATS}, got {fmt!r}")


class AudioStore(ABC):
    """Chunks (FLAC and MP3 bytes) and tracks (segments of normalized stereo PCM) by request."""

    root: Path  # this machine's directory for audio being written (and, for files, the audio itself)

    def __init__(self, root: Path, cache_bytes: int = CACHE_BYTES):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[Key, bytes] = OrderedDict()
        self._cached = 0
        self._reading: dict[Key, asyncio.Future] = {}

    # -- chunks ---------------------------------------------------------------------------

    @abstractmethod
    async def put(self, request_id: str, chunk_id: str, fmt: str, data: bytes) -> None:
        """Store a chunk's complete bytes; readable by everyone once this returns."""

    @abstractmethod
    def part_path(self, request_id: str, chunk_id: str, fmt: str) -> Path:
        """A local file another program (the MP3 encoder) writes a chunk into; `commit` stores it."""

    @abstractmethod
    async def commit(self, request_id: str, chunk_id: str, fmt: str) -> None:
        """The file at `part_path` is complete: store it as the chunk's bytes."""

    @abstractmethod
    async def has(self, request_id: str, chunk_id: str, fmt: str) -> bool:
        """Whether the chunk's bytes in that format are stored."""

    @abstractmethod
    async def _load(self, request_id: str, chunk_id: str, fmt: str) -> bytes:
        """The stored bytes; raises FileNotFoundError if there are none."""

    async def read(self, request_id: str, chunk_id: str, fmt: str) -> bytes:
        """A stored chunk's bytes; concurrent reads of one chunk share a single load.

        Raises FileNotFoundError if it is not stored, AudioUnavailable if its store cannot be reached."""
        key = (request_id, chunk_id, fmt)
        if (data := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            return data
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(self._load(*key))
            self._reading[key] = reading
            reading.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(reading)

    def _settle(self, key: Key, done: asyncio.Future) -> None:
        self._reading.pop(key, None)
        if done.cancelled() or done.exception() is not None:
            return  # waiters get the error; nothing is cached
        self._remember(key, done.result())

    def _remember(self, key: Key, data: bytes) -> None:
        if len(data) > self.cache_bytes // 8:
            return  # a huge file would push everything else out
        if (old := self._cache.pop(key, None)) is not None:
            self._cached -= len(old)
        self._cache[key] = data
        self._cached += len(data)
        while self._cached > self.cache_bytes:
            self._cached -= len(self._cache.popitem(last=False)[1])

    @property
    def cached_bytes(self) -> int:
        return self._cached

    def forget(self, request_id: str) -> None:
        """Drop a request's chunks from this process's cache (`delete_request` does it too)."""
        for key in [k for k in self._cache if k[0] == request_id]:
            self._cached -= len(self._cache.pop(key))

    # -- tracks ---------------------------------------------------------------------------

    @abstractmethod
    def decode_path(self, request_id: str) -> Path:
        """Where a track's normalized FLAC master is decoded to (tts/tracks.py `prepare_track`)."""

    @abstractmethod
    async def keep_track(self, request_id: str, segments: int) -> None:
        """The master at `decode_path` is complete: make it the track's audio, cut into `segments`."""

    @abstractmethod
    async def track_segment(self, request_id: str, seq: int, count: int) -> Pcm:
        """Segment `seq` of the track's `count`; raises FileNotFoundError if the track's audio is gone."""

    @abstractmethod
    async def share_track(self, original_id: str, copy_id: str) -> None:
        """Give a copy of a track (a repeat, a retry) the original's audio without copying it.

        Raises FileNotFoundError if the original's audio is gone."""

    # -- removal --------------------------------------------------------------------------

    @abstractmethod
    async def delete_request(self, request_id: str) -> int:
        """Remove a request's audio (and forget it here); returns the bytes freed."""

    @abstractmethod
    async def orphans(self, known_request_ids: set[str], grace_s: float = 600) -> list[str]:
        """Requests with audio but no row in `known_request_ids`, not written to for `grace_s` (younger
        ones may be mid-write: a track is stored before its request row)."""

    @abstractmethod
    async def sweep_parts(self, grace_s: float = 600) -> tuple[int, int]:
        """Remove this machine's unfinished writes older than `grace_s`; returns (bytes, files) removed."""


def open_audio_store(
    data_dir: Path, engine: AsyncEngine | None = None, shared: bool = False, cache_bytes: int = CACHE_BYTES
) -> AudioStore:
    """The audio store of a process: files under `<data_dir>/audio` for the embedded server, or, with
    `shared` (a cluster), rows in `engine`'s database with `<data_dir>/spool` for audio being written."""
    # Imported here: both implementations build on this module.
    if not shared:
        from .audio_files import FileAudioStore

        return FileAudioStore(data_dir / "audio", cache_bytes)
    if engine is None:
        raise ValueError("expected the database engine for a shared audio store, got none")
    from .audio_database import DatabaseAudioStore

    return DatabaseAudioStore(engine, data_dir / "spool", cache_bytes)
