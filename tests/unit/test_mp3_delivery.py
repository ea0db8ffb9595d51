"""The MP3 copy of a chunk, made once however many fetches ask for it before it is stored."""

import asyncio
import io

import numpy as np
import soundfile

from broadcaster.runtime.delivery import Mp3Delivery
from db.audio_database import DatabaseAudioStore
from db.store import Store
from tts.encode import ffmpeg_exe, flac_bytes
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
