"""The MP3 copy of each chunk, made off the path to first audio.

A chunk counts as ready once its lossless FLAC is stored: that is all the
timeline and the progressive stream need. Its MP3, what browsers fetch, is
finished a few tens of milliseconds later by an encoder that was started while
the sentence was being synthesized. A fetch that arrives in between waits for
it; an MP3 lost to a crash between the two files is rebuilt from the FLAC. (With the audio in a
shared database, a process that is not the chunk's maker may rebuild it too, if asked before the
maker stored it: the bytes are the same, and the second to store them changes nothing.)
"""

import asyncio
import logging

from db.audio_store import AudioStore
from tts.encode import ChunkEncoder, decode_flac
from tts.engine import Pcm

log = logging.getLogger(__name__)


class Mp3Delivery:
    def __init__(self, audio: AudioStore, bitrate_kbps: int):
        self.audio = audio
        self.bitrate_kbps = bitrate_kbps
        self.jobs: dict[str, asyncio.Task] = {}

    async def encoder_for(self, request_id: str, chunk_id: str, sample_rate: int, channels: int = 1) -> ChunkEncoder:
        """An encoder writing this chunk's MP3; start it before the PCM exists."""
        target = str(self.audio.part_path(request_id, chunk_id, "mp3"))
        return await ChunkEncoder.start(sample_rate, self.bitrate_kbps * channels, target, channels)

    def finish(self, request_id: str, chunk_id: str, encoder: ChunkEncoder, pcm: Pcm) -> None:
        self._track(chunk_id, self._encode(request_id, chunk_id, encoder, pcm))

    async def ensure(self, request_id: str, chunk_id: str) -> None:
        """Return once the chunk's MP3 is stored; a failed encode is retried once from the FLAC.

        Raises FileNotFoundError if the chunk's audio is gone, GenerationError if encoding keeps failing.
        """
        for attempt in (1, 2):
            # Checked again after the await: fetches that arrive together must share one rebuild, since
            # two would write the same spool file and one could store the other's half-written MP3.
            if chunk_id not in self.jobs and not await self.audio.has(request_id, chunk_id, "mp3"):
                if chunk_id not in self.jobs:
                    self._track(chunk_id, self._rebuild(request_id, chunk_id))
            job = self.jobs.get(chunk_id)
            if job is None:
                return
            try:
                await asyncio.shield(job)
                return
            except FileNotFoundError:
                raise
            except Exception:
                if attempt == 2:
                    raise

    async def close(self) -> None:
        for job in self.jobs.values():
            job.cancel()
        await asyncio.gather(*self.jobs.values(), return_exceptions=True)

    def _track(self, chunk_id: str, work) -> None:  # noqa: ANN001
        job = asyncio.create_task(work, name=f"mp3:{chunk_id}")
        self.jobs[chunk_id] = job
        job.add_done_callback(lambda _: self.jobs.pop(chunk_id, None))
        job.add_done_callback(_seen)  # a failure is logged where it happens; fetches may never ask

    async def _encode(self, request_id: str, chunk_id: str, encoder: ChunkEncoder, pcm: Pcm) -> None:
        try:
            await encoder.encode(pcm)
            await self.audio.commit(request_id, chunk_id, "mp3")
        except asyncio.CancelledError:
            await asyncio.shield(encoder.abandon())
            raise
        except Exception as exc:
            if await self._deleted(request_id, chunk_id):  # a bed replaced, a channel deleted: not a failure
                log.info("MP3 of chunk %s not kept: its audio was deleted meanwhile", chunk_id)
                raise FileNotFoundError(f"the audio of chunk {chunk_id} was deleted") from exc
            log.exception("MP3 of chunk %s could not be made; it will be rebuilt on request", chunk_id)
            raise

    async def _deleted(self, request_id: str, chunk_id: str) -> bool:
        try:
            return not await self.audio.has(request_id, chunk_id, "flac")
        except Exception:  # the audio's database away: not known to be deleted
            return False

    async def _rebuild(self, request_id: str, chunk_id: str) -> None:
        pcm = await decode_flac(await self.audio.read(request_id, chunk_id, "flac"))
        encoder = await self.encoder_for(request_id, chunk_id, pcm.sample_rate, pcm.channels)
        await self._encode(request_id, chunk_id, encoder, pcm)


def _seen(job: asyncio.Task) -> None:
    if not job.cancelled():
        job.exception()
