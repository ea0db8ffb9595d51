"""Turns one sentence into a stored chunk: synthesize, store losslessly, hand off the MP3."""

import asyncio
from dataclasses import dataclass

from broadcaster.core.ids import new_id
from broadcaster.core.model import Chunk, Request
from db.audio_store import AudioStore
from tts.encode import flac_bytes
from tts.engine import Pcm, TtsEngine
from tts.tracks import TRACK_CHANNELS, TRACK_RATE, read_segment

from .clock import Clock
from .delivery import Mp3Delivery


@dataclass
class ChunkMaker:
    engine: TtsEngine
    audio: AudioStore
    clock: Clock
    delivery: Mp3Delivery

    async def make(self, request: Request, seq: int) -> Chunk:
        """Raises GenerationError (engine) or OSError (disk)."""
        text, rid, chunk_id = request.sentences[seq], request.request_id, new_id()
        rate, channels = (TRACK_RATE, TRACK_CHANNELS) if request.kind == "track" else (self.engine.sample_rate, 1)
        encoder = await self.delivery.encoder_for(rid, chunk_id, rate, channels)
        try:
            pcm = await self._produce(request, seq)
            await self.audio.write_part(rid, chunk_id, "flac", await asyncio.to_thread(flac_bytes, pcm))
            await self.audio.commit(rid, chunk_id, "flac")
        except BaseException:
            await asyncio.shield(encoder.abandon())
            raise
        self.delivery.finish(rid, chunk_id, encoder, pcm)
        return Chunk(
            chunk_id=chunk_id, request_id=rid, seq=seq, text=text,
            duration_ms=pcm.duration_ms, ready_at_ms=self.clock(),
            sample_rate=pcm.sample_rate, samples=len(pcm.samples), channels=pcm.channels,
        )

    async def _produce(self, request: Request, seq: int) -> Pcm:
        if request.kind == "track":
            return await asyncio.to_thread(read_segment, self.audio.track_path(request.request_id), seq)
        return await self.engine.synthesize(request.sentences[seq])
