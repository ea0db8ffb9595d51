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
        text = request.sentences[seq]
        encoder = await Mp3Encoder.start(self.engine.sample_rate, self.mp3_bitrate_kbps)
        try:
            pcm = await self.engine.synthesize(text)
        except BaseException:
            await asyncio.shield(encoder.abandon())
            raise
        mp3, flac = await asyncio.gather(encoder.encode(pcm), asyncio.to_thread(flac_bytes, pcm))
        chunk_id = new_id()
        await self.audio.write_chunk(request.request_id, chunk_id, {"mp3": mp3, "flac": flac})
        return Chunk(
            chunk_id=chunk_id, request_id=request.request_id, seq=seq, text=text,
            duration_ms=pcm.duration_ms, ready_at_ms=self.clock(),
            sample_rate=pcm.sample_rate, samples=len(pcm.samples),
        )
