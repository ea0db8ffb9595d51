"""Chunk audio formats: FLAC keeps the exact samples, MP3 is what browsers fetch.

The MP3 encoder is the ffmpeg binary bundled by imageio-ffmpeg, run as a
subprocess so the event loop keeps serving while it works.
"""

import asyncio
import io
from functools import cache

import ffmpeg
import imageio_ffmpeg
import numpy as np
import soundfile

from broadcaster.errors import GenerationError

from .children import kill, spawn
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
