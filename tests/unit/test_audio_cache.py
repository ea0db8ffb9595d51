"""Chunk reads are cached and shared, and forgotten with their files."""

import asyncio

import pytest

from db.audio_store import AudioStore

RID, CID = "a" * 16, "b" * 16


async def store_chunk(audio: AudioStore, data: bytes, chunk_id: str = CID) -> None:
    await audio.write_part(RID, chunk_id, "mp3", data)
    await audio.commit(RID, chunk_id, "mp3")


async def test_concurrent_reads_share_one_copy_and_later_reads_hit_the_cache(tmp_path):
    audio = AudioStore(tmp_path)
    await store_chunk(audio, b"x" * 1000)
    copies = await asyncio.gather(*(audio.read(RID, CID, "mp3") for _ in range(50)))
    assert all(c is copies[0] for c in copies) and copies[0] == b"x" * 1000
    audio.path(RID, CID, "mp3").unlink()
    assert await audio.read(RID, CID, "mp3") is copies[0]  # from memory


async def test_deleted_audio_is_forgotten_and_errors_are_not_cached(tmp_path):
    audio = AudioStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        await audio.read(RID, CID, "mp3")
    await store_chunk(audio, b"late")
    assert await audio.read(RID, CID, "mp3") == b"late"
    audio.delete_request(RID)
    audio.forget(RID)
    with pytest.raises(FileNotFoundError):
        await audio.read(RID, CID, "mp3")


async def test_the_cache_keeps_to_its_size(tmp_path):
    audio = AudioStore(tmp_path, cache_bytes=8000)
    for i in range(10):
        await store_chunk(audio, bytes(1000), chunk_id=f"{i:016x}")
        await audio.read(RID, f"{i:016x}", "mp3")
    assert audio._cached <= 8000 and len(audio._cache) == 8
