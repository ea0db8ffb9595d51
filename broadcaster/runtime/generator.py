"""Turns one sentence into a stored chunk: synthesize, store losslessly, hand off the MP3."""

import asyncio
import time
from dataclasses import dataclass, field

from broadcaster.core.ids import new_id
from broadcaster.core.model import Chunk, Request
from db.audio_store import AudioStore
from tts.encode import flac_bytes
from tts.engine import Pcm, TtsEngine
from tts.tracks import TRACK_CHANNELS, TRACK_RATE
from tts.voices import Voices

from .clock import Clock
from .delivery import Mp3Delivery
from .synthesis import SynthesisQueue
from .telemetry import Telemetry


@dataclass
class ChunkMaker:
    engine: TtsEngine
    audio: AudioStore
    clock: Clock
    delivery: Mp3Delivery
    metrics: Telemetry = field(default_factory=Telemetry)
    synthesis: SynthesisQueue | None = None  # shares the engine fairly between channels
    voices: Voices | None = None  # the named voices besides the default (the engine)

    async def make(self, request: Request, seq: int, deadline_ms: int | None = None) -> Chunk:
        """Raises GenerationError (engine) or OSError (disk, or the audio's database away). `deadline_ms`:
        when the chunk must be ready to start on time, if it is already awaited."""
        started = time.perf_counter()
        text, rid, chunk_id = request.sentences[seq], request.request_id, new_id()
        rate, channels = (TRACK_RATE, TRACK_CHANNELS) if request.kind == "track" else (self.engine.sample_rate, 1)
        # The MP3 encoder's process starts while the audio is made: its start is off the way to first audio.
        starting = asyncio.create_task(self.delivery.encoder_for(rid, chunk_id, rate, channels))
        try:
            pcm = await self._produce(request, seq, deadline_ms)
            await self.audio.put(rid, chunk_id, "flac", await asyncio.to_thread(flac_bytes, pcm))
            encoder = await starting
        except BaseException:
            await asyncio.shield(_abandon(starting))
            raise
        self.delivery.finish(rid, chunk_id, encoder, pcm)
        self.metrics.chunk_made(request.kind, time.perf_counter() - started)
        return Chunk(
            chunk_id=chunk_id,
            request_id=rid,
            seq=seq,
            text=text,
            duration_ms=pcm.duration_ms,
            ready_at_ms=self.clock(),
            sample_rate=pcm.sample_rate,
            samples=len(pcm.samples),
            channels=pcm.channels,
        )

    async def _produce(self, request: Request, seq: int, deadline_ms: int | None) -> Pcm:
        if request.kind == "track":
            return await self.audio.track_segment(request.request_id, seq, len(request.sentences))
        engine = self.engine if self.voices is None else self.voices.engine(request.voice)
        if self.synthesis is not None:
            return await self.synthesis.speak(request.sentences[seq], deadline_ms, engine)
        return await engine.synthesize(request.sentences[seq])


async def _abandon(starting: asyncio.Task) -> None:
    """Stop an encoder whose chunk will not be made, once it has started (if it started at all)."""
    try:
        encoder = await starting
    except Exception:  # it failed to start: nothing to stop
        return
    await encoder.abandon()
