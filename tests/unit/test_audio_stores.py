"""Both audio stores keep the same promises: chunks stored whole and read back through a shared cache, tracks
cut into segments and shared by their copies, and a request's audio deleted with it or found as an orphan. Files
on disk; rows in a real database (SQLite and PostgreSQL), read by any process on any machine."""

import asyncio
import os
import time

import numpy as np
import pytest
import soundfile
from postgres import PostgresServer
from sqlalchemy import delete, func, select

from db.audio_database import SEGMENTS, TRACKS, DatabaseAudioStore
from db.audio_files import FileAudioStore
from db.audio_store import AudioUnavailable, open_audio_store
from db.store import Store
from tts.tracks import TRACK_RATE, read_segment, segment_count

RID, CID = "a" * 16, "b" * 16
COPY = "c" * 16


@pytest.fixture(params=["files", "sqlite", "postgresql"])
def kind(request) -> str | None:
    """Files (None), or the URL of a fresh database of each kind."""
    if request.param == "files":
        return None
    return request.getfixturevalue("database_url")


@pytest.fixture
def database_url(request, tmp_path):
    """Narrows tests/postgres.py's fixture to the kind asked for (it is parametrized over both)."""
    if request.node.callspec.params["kind"] == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'broadcaster.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def audio(kind, tmp_path):
    """A store of each kind: files, or rows in a fresh database."""
    if kind is None:
        yield FileAudioStore(tmp_path / "audio")
        return
    store = Store(kind)
    await store.create_schema()
    yield DatabaseAudioStore(store.engine, tmp_path / "machine-1" / "spool")
    await store.close()


@pytest.fixture
async def shared(postgres_url, tmp_path):
    """Two processes on two machines (their own spool directories) sharing one PostgreSQL database."""
    store = Store(postgres_url)
    await store.create_schema()
    yield (
        open_audio_store(tmp_path / "machine-1", store.engine, shared=True),
        open_audio_store(tmp_path / "machine-2", store.engine, shared=True),
    )
    await store.close()


def counting_loads(audio) -> list:
    """Records every load that reaches the files or the database."""
    loads, load = [], audio._load

    async def counted(*key):
        loads.append(key)
        return await load(*key)

    audio._load = counted
    return loads


async def encoded(audio, data: bytes, chunk_id: str = CID) -> None:
    """A chunk's MP3 as the encoder makes it: written to the part file by another program, then committed."""
    audio.part_path(RID, chunk_id, "mp3").write_bytes(data)
    await audio.commit(RID, chunk_id, "mp3")


def decoded_master(audio, request_id: str, seconds: float = 6) -> np.ndarray:
    """A normalized stereo master where `prepare_track` would leave it; returns its samples."""
    rng = np.random.default_rng(7)
    samples = rng.integers(-3000, 3000, size=(int(seconds * TRACK_RATE), 2), dtype=np.int16)
    path = audio.decode_path(request_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, TRACK_RATE, format="FLAC", subtype="PCM_16")
    return samples


async def test_a_stored_chunk_reads_back_whole_in_either_format(audio):
    """A FLAC put and an MP3 committed from its part file read back as written; nothing else is there."""
    assert not await audio.has(RID, CID, "flac")
    with pytest.raises(FileNotFoundError):
        await audio.read(RID, CID, "flac")
    await audio.put(RID, CID, "flac", b"lossless" * 100)
    await encoded(audio, b"mp3" * 100)
    assert await audio.has(RID, CID, "flac") and await audio.has(RID, CID, "mp3")
    assert await audio.read(RID, CID, "flac") == b"lossless" * 100
    assert await audio.read(RID, CID, "mp3") == b"mp3" * 100
    assert not audio.part_path(RID, CID, "mp3").exists()


async def test_ids_that_are_not_hex_are_refused(audio):
    """Ids become file names and keys: anything but hex is refused before it reaches a path or a row."""
    for bad in ("../etc", "A" * 16, "ab"):
        with pytest.raises(ValueError, match="hex"):
            audio.part_path(bad, CID, "mp3")
        with pytest.raises(ValueError, match="hex"):
            audio.decode_path(bad)
    with pytest.raises(ValueError, match="format"):
        audio.part_path(RID, CID, "wav")


async def test_concurrent_reads_share_one_load_and_later_reads_hit_the_cache(audio):
    """Fifty listeners asking at once cost one load and share one copy; the next read costs none."""
    await encoded(audio, b"x" * 1000)
    audio.forget(RID)  # as a process that did not write it
    loads = counting_loads(audio)
    copies = await asyncio.gather(*(audio.read(RID, CID, "mp3") for _ in range(50)))
    assert all(c is copies[0] for c in copies) and copies[0] == b"x" * 1000
    assert await audio.read(RID, CID, "mp3") is copies[0]
    assert len(loads) == 1


async def test_errors_are_not_cached_and_deleted_audio_is_forgotten(audio):
    """A chunk missing at first is read once it is stored; once deleted it is gone from the cache too."""
    with pytest.raises(FileNotFoundError):
        await audio.read(RID, CID, "mp3")
    await encoded(audio, b"late")
    assert await audio.read(RID, CID, "mp3") == b"late"
    assert await audio.delete_request(RID) == 4
    assert audio.cached_bytes == 0
    with pytest.raises(FileNotFoundError):
        await audio.read(RID, CID, "mp3")
    assert await audio.delete_request(RID) == 0


async def test_the_cache_keeps_to_its_size(audio):
    """The least recently read chunks leave the cache first, and it never holds more than its size."""
    audio.cache_bytes = 8000
    for i in range(10):
        await encoded(audio, bytes(1000), chunk_id=f"{i:016x}")
        await audio.read(RID, f"{i:016x}", "mp3")
    assert audio.cached_bytes <= 8000 and len(audio._cache) == 8
    assert (RID, f"{0:016x}", "mp3") not in audio._cache


async def test_a_track_is_cut_into_the_segments_read_segment_gives(audio):
    """After `keep_track` each segment is the master's, sample for sample, a short tail in the last."""
    samples = decoded_master(audio, RID, seconds=10.02)
    count = segment_count(len(samples))
    assert count == 2  # 5 s, then 5.02 s: a tail of 20 ms joins the segment before it
    reference = audio.root / "reference.flac"
    soundfile.write(reference, samples, TRACK_RATE, format="FLAC", subtype="PCM_16")
    await audio.keep_track(RID, count)
    for seq in range(count):
        got = await audio.track_segment(RID, seq, count)
        assert got.sample_rate == TRACK_RATE
        assert np.array_equal(got.samples, read_segment(reference, seq, count).samples)
    with pytest.raises(FileNotFoundError):
        await audio.track_segment(COPY, 0, count)


async def test_a_copy_shares_the_track_and_keeps_it_after_the_original_is_deleted(audio):
    """A repeat's copy reads the same segments; deleting the original leaves them to the copy, and deleting
    the copy too removes them."""
    samples = decoded_master(audio, RID)
    count = segment_count(len(samples))
    await audio.keep_track(RID, count)
    await audio.share_track(RID, COPY)
    first = (await audio.track_segment(RID, 0, count)).samples
    assert np.array_equal((await audio.track_segment(COPY, 0, count)).samples, first)
    freed = await audio.delete_request(RID)
    if isinstance(audio, FileAudioStore):  # the master stays, linked from the copy: its bytes are not freed
        assert freed < (audio.root / COPY / "track.flac").stat().st_size
    with pytest.raises(FileNotFoundError):
        await audio.track_segment(RID, 0, count)
    assert np.array_equal((await audio.track_segment(COPY, 1, count)).samples, samples[TRACK_RATE * 5 :])
    assert await audio.delete_request(COPY) > 0
    with pytest.raises(FileNotFoundError):
        await audio.track_segment(COPY, 0, count)
    with pytest.raises(FileNotFoundError):
        await audio.share_track(COPY, "d" * 16)


async def test_a_track_and_its_copy_deleted_at_once_leave_no_segments(audio):
    """An original and its repeat purged in the same moment (two processes' cleanups): the last to go
    takes the segments, whichever it is."""
    for round_ in range(5):
        original, copy = f"{round_:x}" * 16, f"{round_ + 8:x}" * 16
        decoded_master(audio, original, seconds=6)
        await audio.keep_track(original, 2)
        await audio.share_track(original, copy)
        await asyncio.gather(audio.delete_request(original), audio.delete_request(copy))
        for request_id in (original, copy):
            with pytest.raises(FileNotFoundError):
                await audio.track_segment(request_id, 0, 2)
        if isinstance(audio, DatabaseAudioStore):
            async with audio.engine.connect() as conn:
                assert (await conn.execute(select(func.count()).select_from(SEGMENTS))).scalar() == 0, round_
        else:
            assert not any(audio.root.iterdir())


async def test_orphans_are_audio_no_request_claims_once_the_grace_is_over(audio):
    """Audio of an unknown request is an orphan once not written to for the grace period; known or recent
    audio is not."""
    await audio.put(RID, CID, "flac", b"flac")
    decoded_master(audio, COPY, seconds=1)
    await audio.keep_track(COPY, 1)
    assert await audio.orphans(set(), grace_s=600) == []
    if isinstance(audio, FileAudioStore):  # a directory's age is its modification time
        old = time.time() - 3600
        (audio.root / "lost+found").mkdir()  # not a request's: never an orphan, however old
        for name in (RID, COPY, "lost+found"):
            os.utime(audio.root / name, (old, old))
    else:
        await asyncio.sleep(0.01)  # the database's clock moves on
    assert sorted(await audio.orphans(set(), grace_s=0.001)) == [RID, COPY]
    assert await audio.orphans({RID}, grace_s=0.001) == [COPY]
    for orphan in (RID, COPY):
        assert await audio.delete_request(orphan) > 0
    assert await audio.orphans(set(), grace_s=0) == []


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"], indirect=True)
async def test_segments_no_track_names_are_orphans_at_once(audio):
    """Segments whose track rows are all gone (an original and its repeat deleted at once, before the lock
    that prevents it) are found under their source's id, whatever the grace, and removed with it."""
    decoded_master(audio, RID, seconds=6)
    await audio.keep_track(RID, 2)
    await audio.share_track(RID, COPY)
    assert await audio.orphans(set(), grace_s=600) == []
    async with audio.engine.begin() as conn:  # what the race left: no track row, the segments still there
        await conn.execute(delete(TRACKS))
    assert await audio.orphans({RID}, grace_s=600) == []
    assert await audio.orphans(set(), grace_s=600) == [RID]
    assert await audio.delete_request(RID) > 0
    async with audio.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(SEGMENTS))).scalar() == 0
    assert await audio.orphans(set(), grace_s=0) == []


async def test_the_writer_caches_what_it_stores_and_another_machine_loads_it_once(shared):
    """The process that stores a chunk serves it from memory; a process on another machine loads it from the
    database once and then from its own memory."""
    writer, reader = shared
    await writer.put(RID, CID, "flac", b"f" * 5000)
    await encoded(writer, b"m" * 3000)
    written, loaded = counting_loads(writer), counting_loads(reader)
    assert await writer.read(RID, CID, "flac") == b"f" * 5000 and written == []
    assert await reader.has(RID, CID, "mp3")
    assert await reader.read(RID, CID, "mp3") == b"m" * 3000
    assert await reader.read(RID, CID, "flac") == b"f" * 5000
    assert await reader.read(RID, CID, "flac") == b"f" * 5000
    assert loaded == [(RID, CID, "mp3"), (RID, CID, "flac")]


async def test_a_track_decoded_on_one_machine_plays_on_another(shared):
    """Segments stored by the machine that decoded the track are read by another, which never saw its master,
    and a copy made there shares them."""
    first, second = shared
    samples = decoded_master(first, RID)
    await first.keep_track(RID, 2)
    assert not first.decode_path(RID).exists()  # no master is kept anywhere
    assert np.array_equal((await second.track_segment(RID, 0, 2)).samples, samples[: TRACK_RATE * 5])
    await second.share_track(RID, COPY)
    assert np.array_equal((await first.track_segment(COPY, 1, 2)).samples, samples[TRACK_RATE * 5 :])


async def test_a_chunk_stored_twice_keeps_its_first_bytes(shared):
    """Two processes rebuilding one missing MP3 both store it; the second store changes nothing."""
    first, second = shared
    await encoded(first, b"same")
    await encoded(second, b"same")
    second.forget(RID)
    assert await second.read(RID, CID, "mp3") == b"same"


async def test_unfinished_writes_are_swept_from_this_machine_after_the_grace(shared):
    """A part file an encoder left behind (a crash) is removed once older than the grace; a fresh one stays."""
    store, _ = shared
    stale, fresh = store.part_path(RID, CID, "mp3"), store.part_path(RID, "d" * 16, "mp3")
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert await store.sweep_parts(grace_s=600) == (100, 1)
    assert not stale.exists() and fresh.exists()
    await store.delete_request(RID)
    assert not fresh.exists()


async def test_with_the_database_away_cached_chunks_are_served_and_the_rest_is_unavailable(
    shared, postgres_server: PostgresServer
):
    """During a database outage a cached chunk still reads; an uncached one raises AudioUnavailable (an
    OSError), not a missing file; once the database is back it reads again."""
    writer, reader = shared
    await writer.put(RID, CID, "flac", b"cached")
    await writer.put(RID, "d" * 16, "flac", b"not cached")
    writer.forget(RID)
    await writer.read(RID, CID, "flac")
    await asyncio.to_thread(postgres_server.stop)
    try:
        assert await writer.read(RID, CID, "flac") == b"cached"
        with pytest.raises(AudioUnavailable):
            await reader.read(RID, "d" * 16, "flac")
    finally:
        await asyncio.to_thread(postgres_server.start)
    assert await reader.read(RID, "d" * 16, "flac") == b"not cached"
