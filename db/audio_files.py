"""Chunk audio in files: <data_dir>/audio/<request_id>/<chunk_id>.{flac,mp3}, for one server.

A file appears under its final name only once completely written (write to a temporary name,
then rename). A track keeps its normalized master, `<request_id>/track.flac`, read segment by
segment as it plays; a copy of the track (a repeat, a retry) hard-links it. Deleting a request's
audio removes its directory; `orphans()` finds directories left behind by a crash.
"""

import asyncio
import os
import shutil
import time
from pathlib import Path

from tts.engine import Pcm
from tts.tracks import read_segment

from .audio_store import CACHE_BYTES, AudioStore, check_ids


class FileAudioStore(AudioStore):
    def __init__(self, root: Path, cache_bytes: int = CACHE_BYTES):
        super().__init__(root, cache_bytes)

    def path(self, request_id: str, chunk_id: str, fmt: str) -> Path:
        check_ids(request_id, chunk_id, fmt)
        return self.root / request_id / f"{chunk_id}.{fmt}"

    def track_path(self, request_id: str) -> Path:
        """A music track's normalized lossless master, cut into chunks as it plays."""
        check_ids(request_id)
        return self.root / request_id / "track.flac"

    # -- chunks ---------------------------------------------------------------------------

    def part_path(self, request_id: str, chunk_id: str, fmt: str) -> Path:
        final = self.path(request_id, chunk_id, fmt)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_suffix(f".{fmt}.part")

    async def put(self, request_id: str, chunk_id: str, fmt: str, data: bytes) -> None:
        await self.write_part(request_id, chunk_id, fmt, data)
        await self.commit(request_id, chunk_id, fmt)

    async def write_part(self, request_id: str, chunk_id: str, fmt: str, data: bytes) -> None:
        await asyncio.to_thread(self.part_path(request_id, chunk_id, fmt).write_bytes, data)

    async def commit(self, request_id: str, chunk_id: str, fmt: str) -> None:
        await asyncio.to_thread(self._commit, request_id, chunk_id, fmt)

    def _commit(self, request_id: str, chunk_id: str, fmt: str) -> None:
        part = self.part_path(request_id, chunk_id, fmt)
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, self.path(request_id, chunk_id, fmt))

    async def has(self, request_id: str, chunk_id: str, fmt: str) -> bool:
        return self.path(request_id, chunk_id, fmt).is_file()

    async def _load(self, request_id: str, chunk_id: str, fmt: str) -> bytes:
        return await asyncio.to_thread(self.path(request_id, chunk_id, fmt).read_bytes)

    # -- tracks ---------------------------------------------------------------------------

    def decode_path(self, request_id: str) -> Path:
        return self.track_path(request_id)

    async def keep_track(self, request_id: str, segments: int) -> None:
        """The master stays where it was decoded; chunks are cut from it as they play."""

    async def track_segment(self, request_id: str, seq: int, count: int) -> Pcm:
        return await asyncio.to_thread(_segment, self.track_path(request_id), seq, count)

    async def share_track(self, original_id: str, copy_id: str) -> None:
        await asyncio.to_thread(_link, self.track_path(original_id), self.track_path(copy_id))

    # -- removal --------------------------------------------------------------------------

    async def delete_request(self, request_id: str) -> int:
        freed = await asyncio.to_thread(self._delete, request_id)
        self.forget(request_id)
        return freed

    def _delete(self, request_id: str) -> int:
        directory = self.root / request_id
        try:
            check_ids(request_id)
        except ValueError:
            return 0
        if not directory.is_dir():
            return 0
        # A master hard-linked into a repeat's directory frees nothing here: only a file's last name counts.
        freed = sum(st.st_size for p in directory.iterdir() if p.is_file() and (st := p.stat()).st_nlink == 1)
        shutil.rmtree(directory, ignore_errors=True)
        return freed

    async def orphans(self, known_request_ids: set[str], grace_s: float = 600) -> list[str]:
        return await asyncio.to_thread(self._orphans, known_request_ids, grace_s)

    def _orphans(self, known_request_ids: set[str], grace_s: float) -> list[str]:
        """Directories no request row claims, not modified for `grace_s`. Only a request's directory (a hex
        id) is ours: anything else there (`lost+found` on a mount of its own) is left alone, and not counted."""
        cutoff = time.time() - grace_s
        found = []
        for entry in self.root.iterdir():
            if not entry.is_dir() or entry.name in known_request_ids or not _is_request_id(entry.name):
                continue
            if entry.stat().st_mtime < cutoff:
                found.append(entry.name)
        return found

    async def sweep_parts(self, grace_s: float = 600) -> tuple[int, int]:
        """Unfinished files live in their request's directory and go with it."""
        return 0, 0


def _is_request_id(name: str) -> bool:
    try:
        check_ids(name)
    except ValueError:
        return False
    return True


def _segment(master: Path, seq: int, count: int) -> Pcm:
    if not master.is_file():  # libsndfile would only say "System error."
        raise FileNotFoundError(f"no master of the track at {master}")
    return read_segment(master, seq, count)


def _link(source: Path, target: Path) -> None:
    """Share a track's master with its copy (hard link; a copy where links are not possible)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
