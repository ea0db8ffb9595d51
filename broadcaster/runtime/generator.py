"""Turns one sentence into a stored chunk: synthesize, encode, write files."""

import asyncio
from dataclasses import dataclass

from broadcaster.core.ids import new_id
from broadcaster.core.model import Chunk, Request
from db.audio_store import AudioStore
from tts.encode import Mp3Encoder, flac_bytes
from tts.engine import TtsEngine

from .clock import Clock


@dataclass
class ChunkMaker:
    engine: TtsEngine
    audio: AudioStore
    clock: Clock
    mp3_bitrate_kbps: int = 64

    async def make(self, request: Request, seq: int) -> Chunk:
        """Raises GenerationError (engine, encoder) or OSError (disk)."""
        text, rid, chunk_id = request.sentences[seq], request.request_id, new_id()
        mp3_part = str(self.audio.part_path(rid, chunk_id, "mp3"))
        encoder = await Mp3Encoder.start(self.engine.sample_rate, self.mp3_bitrate_kbps, mp3_part)
        try:
            pcm = await self.engine.synthesize(text)
        except BaseException:
            await asyncio.shield(encoder.abandon())
            raise
        flac = await asyncio.to_thread(flac_bytes, pcm)
        await asyncio.gather(encoder.encode(pcm), self.audio.write_part(rid, chunk_id, "flac", flac))
        await self.audio.commit_chunk(rid, chunk_id)
        return Chunk(
            chunk_id=chunk_id, request_id=rid, seq=seq, text=text,
            duration_ms=pcm.duration_ms, ready_at_ms=self.clock(),
            sample_rate=pcm.sample_rate, samples=len(pcm.samples),
        )
