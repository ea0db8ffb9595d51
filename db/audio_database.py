"""Audio in the database every process shares (PostgreSQL in a cluster): any process serves any chunk.

- **Chunks.** A chunk's FLAC and MP3 are rows of `chunk_audio` (bytea), inserted whole: a FLAC
  before its chunk's row exists, so before the chunk is announced; an MP3 once its encoder has
  written it to this machine's spool (`<data_dir>/spool`). The writer keeps what it wrote in its
  cache and every other process caches what it loads, so a listener's fetch seldom reaches the
  database. Inserting a chunk twice is harmless: two processes rebuilding a missing MP3 from the
  FLAC make the same bytes, and the second insert does nothing.
- **Tracks.** When a track is decoded its master (in the spool) is cut into its segments, each a
  FLAC of what `read_segment` gives (`track_segments`), and removed. Any process then reads the
  one segment it plays next (a few hundred KB), never the whole track (50-100 MB for ten
  minutes), so a channel's new owner on another machine plays on without fetching anything
  first. A request's `track_audio` row names whose segments it plays: its own, or, for a repeat
  or a retry, the original's, so a copy costs one row. Segments go when the last request that
  names them does.
- **Deleting.** `delete_request` removes a request's chunks and its track row in one transaction,
  and the segments if no other request names them. Sharing a track reads the original's row
  `FOR SHARE`, so a purge of the original cannot slip between the read and the copy's insert.
  Segments no row names are orphans under their source's id, whatever their age.

Times (`written_at_ms`, the orphans' grace) are the database's clock, as for leases: machines'
clocks may disagree, the database's is one.
"""

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import delete, func, insert, literal_column, select, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broadcaster.errors import BroadcasterError
from tts.encode import decode_flac
from tts.engine import Pcm
from tts.tracks import segment_flacs

from .audio_store import CACHE_BYTES, AudioStore, AudioUnavailable, check_ids
from .leases import NOW_MS
from .models import ChunkAudioRow, TrackAudioRow, TrackSegmentRow

CHUNKS = ChunkAudioRow.__table__
TRACKS = TrackAudioRow.__table__
SEGMENTS = TrackSegmentRow.__table__
SEGMENT_BATCH = 8  # segments cut and inserted at a time: 4-6 MB of FLAC in memory, whatever the track's length
_INSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


class DatabaseAudioStore(AudioStore):
    def __init__(self, engine: AsyncEngine, spool: Path, cache_bytes: int = CACHE_BYTES):
        super().__init__(spool, cache_bytes)
        dialect = engine.dialect.name
        if dialect not in _INSERT:
            raise BroadcasterError(f"expected a PostgreSQL or SQLite database for audio, got {dialect}")
        self.engine = engine
        self._now = literal_column(NOW_MS[dialect])
        self._insert_chunk = _INSERT[dialect](CHUNKS).values(written_at_ms=self._now).on_conflict_do_nothing()
        # Spool names carry this store's own tag: processes on one machine may share the directory.
        self._tag = f"{os.getpid()}-{os.urandom(3).hex()}"

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.begin() as conn:
                yield conn
        except FileNotFoundError:
            raise
        except (DBAPIError, OSError) as exc:  # a connection refused at connect is a plain OSError
            raise AudioUnavailable(f"the audio database cannot be reached: {exc}"[:300]) from exc

    # -- chunks ---------------------------------------------------------------------------

    def part_path(self, request_id: str, chunk_id: str, fmt: str) -> Path:
        check_ids(request_id, chunk_id, fmt)
        return self.root / f"{request_id}.{chunk_id}.{self._tag}.{fmt}.part"

    async def put(self, request_id: str, chunk_id: str, fmt: str, data: bytes) -> None:
        check_ids(request_id, chunk_id, fmt)
        async with self._transaction() as conn:
            await conn.execute(
                self._insert_chunk, {"chunk_id": chunk_id, "fmt": fmt, "request_id": request_id, "data": data}
            )
        self._remember((request_id, chunk_id, fmt), data)

    async def commit(self, request_id: str, chunk_id: str, fmt: str) -> None:
        part = self.part_path(request_id, chunk_id, fmt)
        await self.put(request_id, chunk_id, fmt, await asyncio.to_thread(part.read_bytes))
        await asyncio.to_thread(part.unlink, missing_ok=True)

    async def has(self, request_id: str, chunk_id: str, fmt: str) -> bool:
        """Loads the bytes (into the cache) if they exist: whoever asks is about to read them."""
        try:
            await self.read(request_id, chunk_id, fmt)
        except FileNotFoundError:
            return False
        return True

    async def _load(self, request_id: str, chunk_id: str, fmt: str) -> bytes:
        query = select(CHUNKS.c.data).where(CHUNKS.c.chunk_id == chunk_id, CHUNKS.c.fmt == fmt)
        async with self._transaction() as conn:
            data = (await conn.execute(query)).scalar()
        if data is None:
            raise FileNotFoundError(f"no {fmt} of chunk {chunk_id} is stored")
        return data

    # -- tracks ---------------------------------------------------------------------------

    def decode_path(self, request_id: str) -> Path:
        check_ids(request_id)
        return self.root / f"{request_id}.{self._tag}.track.flac"

    async def keep_track(self, request_id: str, segments: int) -> None:
        """Cut the decoded master into its segments, a batch at a time, and store them with the track's row
        in one transaction; the master is removed either way."""
        master = self.decode_path(request_id)
        try:
            async with self._transaction() as conn:
                for first in range(0, segments, SEGMENT_BATCH):
                    end = min(first + SEGMENT_BATCH, segments)
                    flacs = await asyncio.to_thread(segment_flacs, master, first, end, segments)
                    rows = [{"source_id": request_id, "seq": first + i, "data": data} for i, data in enumerate(flacs)]
                    await conn.execute(insert(SEGMENTS), rows)
                await conn.execute(
                    insert(TRACKS).values(request_id=request_id, source_id=request_id, written_at_ms=self._now)
                )
        finally:
            await asyncio.to_thread(master.unlink, missing_ok=True)

    async def track_segment(self, request_id: str, seq: int, count: int) -> Pcm:
        query = (
            select(SEGMENTS.c.data)
            .join(TRACKS, TRACKS.c.source_id == SEGMENTS.c.source_id)
            .where(TRACKS.c.request_id == request_id, SEGMENTS.c.seq == seq)
        )
        async with self._transaction() as conn:
            data = (await conn.execute(query)).scalar()
        if data is None:
            raise FileNotFoundError(f"no segment {seq} of track {request_id} is stored")
        return await decode_flac(data)

    async def share_track(self, original_id: str, copy_id: str) -> None:
        check_ids(copy_id)
        source = select(TRACKS.c.source_id).where(TRACKS.c.request_id == original_id).with_for_update(read=True)
        async with self._transaction() as conn:
            source_id = (await conn.execute(source)).scalar()
            if source_id is None:
                raise FileNotFoundError(f"no audio of track {original_id} is stored")
            await conn.execute(insert(TRACKS).values(request_id=copy_id, source_id=source_id, written_at_ms=self._now))

    # -- removal --------------------------------------------------------------------------

    async def delete_request(self, request_id: str) -> int:
        async with self._transaction() as conn:
            freed = await _deleted_bytes(
                conn, delete(CHUNKS).where(CHUNKS.c.request_id == request_id).returning(func.length(CHUNKS.c.data))
            )
            gone = delete(TRACKS).where(TRACKS.c.request_id == request_id).returning(TRACKS.c.source_id)
            # The request's own segments are checked too: segments no row names (left by a version before the
            # lock below) are found as orphans under their source's id and go here.
            for source_id in sorted({request_id, *(await conn.execute(gone)).scalars().all()}):
                # Two requests sharing a track deleted at once (an original and its repeat) would each still
                # see the other's row and keep the segments for good: the second waits here for the first,
                # and then sees its row gone. (SQLite has one writer at a time anyway.)
                await conn.execute(select(SEGMENTS.c.seq).where(SEGMENTS.c.source_id == source_id).with_for_update())
                still_named = select(TRACKS.c.request_id).where(TRACKS.c.source_id == source_id).exists()
                segments = delete(SEGMENTS).where(SEGMENTS.c.source_id == source_id, ~still_named)
                freed += await _deleted_bytes(conn, segments.returning(func.length(SEGMENTS.c.data)))
        self.forget(request_id)
        await asyncio.to_thread(self._drop_parts, request_id)
        return freed

    def _drop_parts(self, request_id: str) -> None:
        """This machine's unfinished files of the request (an encoder abandoned when it failed)."""
        for part in self.root.glob(f"{request_id}.*"):
            part.unlink(missing_ok=True)

    async def orphans(self, known_request_ids: set[str], grace_s: float = 600) -> list[str]:
        written = union_all(
            select(CHUNKS.c.request_id, CHUNKS.c.written_at_ms), select(TRACKS.c.request_id, TRACKS.c.written_at_ms)
        ).subquery()
        query = (
            select(written.c.request_id)
            .group_by(written.c.request_id)
            .having(func.max(written.c.written_at_ms) < self._now - int(grace_s * 1000))
        )
        # Segments no track row names: never in the making (a track's segments and row are written in one
        # transaction), so no grace applies.
        named = select(TRACKS.c.request_id).where(TRACKS.c.source_id == SEGMENTS.c.source_id).exists()
        unclaimed = select(SEGMENTS.c.source_id).where(~named).distinct()
        async with self._transaction() as conn:
            found = {*(await conn.execute(query)).scalars().all(), *(await conn.execute(unclaimed)).scalars().all()}
        return sorted(request_id for request_id in found if request_id not in known_request_ids)

    async def sweep_parts(self, grace_s: float = 600) -> tuple[int, int]:
        return await asyncio.to_thread(self._sweep, grace_s)

    def _sweep(self, grace_s: float) -> tuple[int, int]:
        cutoff, freed, count = time.time() - grace_s, 0, 0
        for path in self.root.iterdir():
            with contextlib.suppress(OSError):
                stat = path.stat()
                if path.is_file() and stat.st_mtime < cutoff:
                    path.unlink()
                    freed, count = freed + stat.st_size, count + 1
        return freed, count


async def _deleted_bytes(conn: AsyncConnection, statement) -> int:  # noqa: ANN001
    return sum(length or 0 for length in (await conn.execute(statement)).scalars().all())
