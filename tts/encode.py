"""Chunk audio formats: FLAC keeps the exact samples, MP3 is what browsers fetch.

The MP3 encoder is the ffmpeg binary bundled by imageio-ffmpeg, run as a
subprocess so the event loop keeps serving while it works. A chunk's encoder
is also started and fed from threads of its own (`ChunkEncoder`): one starts
per sentence, and starting a process holds the thread that starts it.
"""

import asyncio
import io
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial

import ffmpeg
import imageio_ffmpeg
import numpy as np
import soundfile

from broadcaster.errors import GenerationError

from .children import child_env, kill, spawn
from .engine import Pcm


@cache
def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def mp3_command(sample_rate: int, bitrate_kbps: int, target: str = "pipe:1", channels: int = 1) -> list[str]:
    stream = ffmpeg.input("pipe:0", f="s16le", ar=sample_rate, ac=channels)
    # Written to a file, the MP3 carries a LAME header recording the encoder delay and padding,
    # so decoders (browsers included) trim them and the decoded length matches the samples.
    # A pipe cannot carry that header; it is flushed packet by packet for live streaming.
    # compression_level 7 is LAME's fast mode: ~10 ms less per sentence, no audible loss for speech.
    options = {"f": "mp3", "acodec": "libmp3lame", "audio_bitrate": f"{bitrate_kbps}k", "compression_level": 7}
    if target == "pipe:1":
        options |= {"write_xing": 0, "flush_packets": 1}
    stream = stream.output(target, **options)
    return stream.global_args("-hide_banner", "-loglevel", "error", "-y").compile(cmd=ffmpeg_exe())


class Mp3Encoder:
    """One ffmpeg process, started before the PCM exists.

    Spawning ffmpeg costs tens of milliseconds, far more than encoding a
    sentence; starting it while the engine is still synthesizing keeps that
    cost off the time to first audio.
    """

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    @classmethod
    async def start(
        cls, sample_rate: int, bitrate_kbps: int = 64, target: str = "pipe:1", channels: int = 1
    ) -> "Mp3Encoder":
        proc = await spawn(
            *mp3_command(sample_rate, bitrate_kbps, target, channels),
            fed=True,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def encode(self, pcm: Pcm) -> bytes:
        """Feed all of the PCM, wait for ffmpeg to finish; returns what it wrote to stdout."""
        out, err = await self.proc.communicate(pcm.samples.astype("<i2").tobytes())
        if self.proc.returncode != 0:
            raise GenerationError(
                f"expected ffmpeg to encode MP3, it exited {self.proc.returncode}: {err.decode()[:200]}"
            )
        return out

    async def abandon(self) -> None:
        kill(self.proc)
        await self.proc.communicate()


# Threads that start and feed chunk encoders: each is held only while a chunk is encoded (tens of ms).
_CHUNK_ENCODING = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mp3")


class ChunkEncoder:
    """ffmpeg writing one chunk's MP3 file, started before the PCM exists (as `Mp3Encoder`), but
    started and fed from a thread: creating a process holds the thread that creates it until the
    child has exec'd, 1-2 ms on an idle machine and 2.6-7.4 ms with both cores busy (traced in
    bench/announce.py, docs/performance.md). On the event loop that held every announcement,
    reply and clock sample behind each sentence's encoder."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self._feeding: asyncio.Future | None = None

    @classmethod
    async def start(cls, sample_rate: int, bitrate_kbps: int, target: str, channels: int = 1) -> "ChunkEncoder":
        command = mp3_command(sample_rate, bitrate_kbps, target, channels)
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
        starting = asyncio.get_running_loop().run_in_executor(
            _CHUNK_ENCODING, partial(subprocess.Popen, command, env=child_env(), **pipes)
        )
        try:
            return cls(await asyncio.shield(starting))
        except asyncio.CancelledError:
            starting.add_done_callback(_discard)  # the process may start yet: it must not be left waiting
            raise

    async def encode(self, pcm: Pcm) -> None:
        """Feed all of the PCM and wait for ffmpeg to finish writing the file."""
        data = pcm.samples.astype("<i2").tobytes()
        self._feeding = asyncio.get_running_loop().run_in_executor(_CHUNK_ENCODING, self.proc.communicate, data)
        _, err = await asyncio.shield(self._feeding)  # cancelled: `abandon` ends the process and waits for it
        if self.proc.returncode != 0:
            raise GenerationError(
                f"expected ffmpeg to encode MP3, it exited {self.proc.returncode}: {err.decode(errors='replace')[:200]}"
            )

    async def abandon(self) -> None:
        kill(self.proc)
        if self._feeding is None:
            self._feeding = asyncio.get_running_loop().run_in_executor(_CHUNK_ENCODING, self.proc.communicate)
        await asyncio.gather(self._feeding, return_exceptions=True)


def _discard(starting: asyncio.Future) -> None:
    """A chunk encoder whose start was cancelled: end it and reap it, off the event loop."""
    if starting.cancelled() or starting.exception() is not None:
        return
    proc = starting.result()
    kill(proc)
    _CHUNK_ENCODING.submit(proc.communicate)


def flac_bytes(pcm: Pcm) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, pcm.samples, pcm.sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


async def decode_flac(data: bytes) -> Pcm:
    """read_flac off the event loop: decoding seconds of audio takes milliseconds."""
    return await asyncio.to_thread(read_flac, data)


def read_flac(data: bytes) -> Pcm:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    return Pcm(np.asarray(samples), rate)
