"""Chunk audio lives in files: <data_dir>/audio/<request_id>/<chunk_id>.{flac,mp3}.

A file appears under its final name only once completely written (write to a
temporary name, then rename), and a chunk row is inserted only after its
lossless file exists, so a reader never sees half a chunk. (The MP3 follows a
moment later; see broadcaster/runtime/delivery.py.) Deleting a request's
audio removes its directory; `orphans()` finds directories left behind by a
crash between the two steps.

Reads are cached: every listener fetches each chunk at about the same moment,
so a thousand requests for one chunk cost one file read and share one copy in
memory. Files never change once committed, so the cache only has to forget
audio that is deleted.
"""

import asyncio
import os
import re
import shutil
import time
from collections import OrderedDict
from pathlib import Path

FORMATS = ("mp3", "flac")
CACHE_BYTES = 16 * 1024 * 1024  # the most recent chunks: minutes of audio, for every listener at once
_ID = re.compile(r"^[0-9a-f]{16,32}$")


class AudioStore:
    def __init__(self, root: Path, cache_bytes: int = CACHE_BYTES):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._cached = 0
        self._reading: dict[tuple[str, str, str], asyncio.Future] = {}

    def path(self, request_id: str, chunk_id: str, fmt: str) -> Path:
        if not (_ID.match(request_id) and _ID.match(chunk_id)) or fmt not in FORMATS:
            raise ValueError(f"expected hex ids and a format in {FORMATS}, got {request_id!r} {chunk_id!r} {fmt!r}")
        return self.root / request_id / f"{chunk_id}.{fmt}"

    def track_path(self, request_id: str) -> Path:
        """A music track's normalized lossless master, cut into chunks as it plays."""
        if not _ID.match(request_id):
            raise ValueError(f"expected a hex request id, got {request_id!r}")
        return self.root / request_id / "track.flac"

    def part_path(self, request_id: str, chunk_id: str, fmt: str) -> Path:
        """Where a chunk file is written before it is complete; `commit_chunk` makes it visible."""
        final = self.path(request_id, chunk_id, fmt)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_suffix(f".{fmt}.part")

    async def write_part(self, request_id: str, chunk_id: str, fmt: str, data: bytes) -> None:
        await asyncio.to_thread(self.part_path(request_id, chunk_id, fmt).write_bytes, data)

    async def commit(self, request_id: str, chunk_id: str, fmt: str) -> None:
        await asyncio.to_thread(self._commit, request_id, chunk_id, fmt)

    def _commit(self, request_id: str, chunk_id: str, fmt: str) -> None:
        part = self.part_path(request_id, chunk_id, fmt)
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, self.path(request_id, chunk_id, fmt))

    def has(self, request_id: str, chunk_id: str, fmt: str) -> bool:
        return self.path(request_id, chunk_id, fmt).is_file()

    async def read(self, request_id: str, chunk_id: str, fmt: str) -> bytes:
        """A committed chunk file's bytes; concurrent reads of one file share a single read."""
        key = (request_id, chunk_id, fmt)
        if (data := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            return data
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(asyncio.to_thread(self.path(*key).read_bytes))
            self._reading[key] = reading
            reading.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(reading)

    def _settle(self, key: tuple[str, str, str], done: asyncio.Future) -> None:
        self._reading.pop(key, None)
        if done.cancelled() or done.exception() is not None:
            return  # waiters get the error; nothing is cached
        data = done.result()
        if len(data) > self.cache_bytes // 8:
            return  # a huge file would push everything else out
        self._cache[key] = data
        self._cached += len(data)
        while self._cached > self.cache_bytes:
            self._cached -= len(self._cache.popitem(last=False)[1])

    @property
    def cached_bytes(self) -> int:
        return self._cached

    def forget(self, request_id: str) -> None:
        """Drop a request's chunks from the cache (call after deleting its files)."""
        for key in [k for k in self._cache if k[0] == request_id]:
            self._cached -= len(self._cache.pop(key))

    def delete_request(self, request_id: str) -> int:
        """Remove a request's audio; returns the bytes freed."""
        directory = self.root / request_id
        if not _ID.match(request_id) or not directory.is_dir():
            return 0
        freed = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
        shutil.rmtree(directory, ignore_errors=True)
        return freed

    def orphans(self, known_request_ids: set[str], grace_s: float = 600) -> list[str]:
        """Audio directories no request row claims, older than `grace_s` (younger may be mid-write)."""
        cutoff = time.time() - grace_s
        found = []
        for entry in self.root.iterdir():
            if entry.is_dir() and entry.name not in known_request_ids and entry.stat().st_mtime < cutoff:
                found.append(entry.name)
        return found
