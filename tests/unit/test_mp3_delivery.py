"""The MP3 copy of a chunk, made once however many fetches ask for it before it is stored."""

import asyncio
import io
import os

import numpy as np
import pytest
import soundfile

from broadcaster.errors import GenerationError
from broadcaster.runtime.delivery import Mp3Delivery
from db.audio_database import DatabaseAudioStore
from db.store import Store
from tts.encode import ChunkEncoder, ffmpeg_exe, flac_bytes
from tts.engine import Pcm

RID, CID = "a" * 16, "b" * 16
RATE = 22050


async def test_fetches_at_once_for_an_mp3_not_stored_share_one_rebuild(tmp_path):
    """Fetches that arrive together for a chunk stored only as FLAC (a process that did not make it) all get one whole MP3."""
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'broadcaster.db'}")
    await store.create_schema()
    try:
        audio = DatabaseAudioStore(store.engine, tmp_path / "spool")
        samples = (np.sin(np.arange(RATE * 2) * 440 * 2 * np.pi / RATE) * 8000).astype(np.int16)
        await audio.put(RID, CID, "flac", flac_bytes(Pcm(samples, RATE)))
        delivery = Mp3Delivery(audio, 64)
        await asyncio.gather(*(delivery.ensure(RID, CID) for _ in range(4)))
        mp3 = await audio.read(RID, CID, "mp3")
        assert abs(await decoded_seconds(mp3) - 2) < 0.1
        assert list((tmp_path / "spool").iterdir()) == []
    finally:
        await store.close()


async def decoded_seconds(mp3: bytes) -> float:
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_exe(), "-v", "error", "-i", "pipe:0", "-f", "wav", "pipe:1", stdin=-1, stdout=-1
    )
    wav, _ = await proc.communicate(mp3)
    info = soundfile.info(io.BytesIO(wav))
    return info.frames / info.samplerate


def children() -> set[int]:
    """This process's child processes now."""
    found = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as listing:
            found |= {int(pid) for pid in listing.read().split()}
    return found


async def test_a_chunk_encoder_writes_the_whole_mp3_and_leaves_no_process(tmp_path):
    before = children()
    samples = (np.sin(np.arange(RATE * 2) * 440 * 2 * np.pi / RATE) * 8000).astype(np.int16)
    target = tmp_path / "chunk.mp3"
    encoder = await ChunkEncoder.start(RATE, 64, str(target), 1)
    await encoder.encode(Pcm(samples, RATE))
    assert abs(await decoded_seconds(target.read_bytes()) - 2) < 0.1
    assert children() == before


async def test_an_abandoned_or_cancelled_chunk_encoder_is_ended_and_reaped(tmp_path):
    """Abandoned before its PCM, cancelled while it starts, or cancelled while fed: no process is left."""
    before = children()
    unused = await ChunkEncoder.start(RATE, 64, str(tmp_path / "unused.mp3"))
    await unused.abandon()
    starting = asyncio.create_task(ChunkEncoder.start(RATE, 64, str(tmp_path / "cancelled.mp3")))
    await asyncio.sleep(0)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting  # the caller is cancelled at once, whether or not the process has started yet
    fed = await ChunkEncoder.start(RATE, 64, str(tmp_path / "fed.mp3"))
    long = np.zeros(RATE * 600, dtype=np.int16)  # ten minutes: still being fed when cancelled
    feeding = asyncio.create_task(fed.encode(Pcm(long, RATE)))
    await asyncio.sleep(0.05)
    feeding.cancel()
    await fed.abandon()
    assert fed.proc.returncode is not None
    async with asyncio.timeout(10):
        while children() != before:  # the cancelled start is reaped by a pool thread
            await asyncio.sleep(0.05)


async def test_a_chunk_encoder_that_fails_says_why(tmp_path):
    encoder = await ChunkEncoder.start(RATE, 64, str(tmp_path / "no-such-dir" / "chunk.mp3"))
    with pytest.raises(GenerationError, match="expected ffmpeg to encode MP3"):
        await encoder.encode(Pcm(np.zeros(RATE, dtype=np.int16), RATE))
