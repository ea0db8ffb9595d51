"""Purge old finished audio (played, failed, cancelled): rows first, then bytes, then orphaned bytes.

Rows go first so no row ever points at deleted audio; if the process dies
between the two steps, the bytes (files, or rows of the audio tables when audio
lives in the database) are orphans and the next sweep removes them. Each
machine also sweeps its own unfinished writes. Safe while the server runs: only
finished requests are touched.
"""

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from broadcaster.config import MusicConfig
from broadcaster.runtime.beds import MAX_TRACKS
from db.audio_store import AudioStore
from db.store import Store

ORPHAN_GRACE_S = 600  # audio nobody claims is an orphan once untouched for this, and more (below)


def orphan_grace_s(music: MusicConfig) -> float:
    """How long audio no row claims yet may be in the making: a bed's folder is decoded file after file
    (each may wait its turn and then run to the decode timeout) and claimed only when all are done."""
    return ORPHAN_GRACE_S + MAX_TRACKS * (music.decode_wait_s + music.decode_timeout_s)


@dataclass
class PurgeResult:
    request_ids: set[str] = field(default_factory=set)
    bytes_freed: int = 0
    orphans: int = 0

    def summary(self) -> dict[str, int]:
        return {"requests": len(self.request_ids), "bytes": self.bytes_freed, "orphans": self.orphans}


async def purge(store: Store, audio: AudioStore, before_ms: int, orphan_grace_s: float = 600) -> PurgeResult:
    result = PurgeResult()
    ids = await store.purge_finished(before_ms)
    result.request_ids = set(ids)
    for request_id in ids:
        result.bytes_freed += await audio.delete_request(request_id)
    known = await store.request_ids()
    for orphan in await audio.orphans(known, orphan_grace_s):
        result.bytes_freed += await audio.delete_request(orphan)
        result.orphans += 1
    swept = await sweep_local(audio, orphan_grace_s)
    result.bytes_freed += swept.bytes_freed
    result.orphans += swept.orphans
    return result


async def sweep_local(audio: AudioStore, grace_s: float = 600) -> PurgeResult:
    """This machine's unfinished writes: its spool or half-written files, and half-received uploads.
    In a cluster every process does this, and one of them the purge (broadcaster/runtime/station.py)."""
    result = PurgeResult()
    for freed, count in (
        await audio.sweep_parts(grace_s),
        await asyncio.to_thread(_stale_uploads, audio.root.parent / "uploads", grace_s),
    ):
        result.bytes_freed += freed
        result.orphans += count
    return result


def _stale_uploads(directory: Path, grace_s: float) -> tuple[int, int]:
    """Uploads a crash left half-received: older than the grace period, they are removed."""
    if not directory.is_dir():
        return 0, 0
    cutoff, freed, count = time.time() - grace_s, 0, 0
    for path in directory.glob("*.upload"):
        with contextlib.suppress(OSError):
            stat = path.stat()
            if stat.st_mtime < cutoff:
                path.unlink()
                freed, count = freed + stat.st_size, count + 1
    return freed, count
