"""The real Piper voice, end to end: what the server reports is what the audio holds."""

import asyncio
import json
import subprocess

import aiohttp
import numpy as np
import pytest

from tts.encode import ffmpeg_exe, read_flac
from tts.engine import Pcm
from tts.loudness import measure_lufs

pytestmark = [pytest.mark.piper, pytest.mark.server_config({"tts": {"engine": "piper"}})]


def decode_mp3(data: bytes, rate: int, tmp_path) -> np.ndarray:
    """Decode from a file, as a browser decodes from a whole buffer: the LAME header is honoured."""
    source = tmp_path / "chunk.mp3"
    source.write_bytes(data)
    out = subprocess.run(
        [
            ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            str(source),
            "-f",
            "s16le",
            "-ac",
            "1",
            "-ar",
            str(rate),
            "pipe:1",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return np.frombuffer(out.stdout, dtype=np.int16)


async def test_piper_chunk_duration_matches_decoded_audio(server, connect, tmp_path):
    """A sentence spoken by Piper reports a duration equal to its decoded lossless audio, and its MP3 agrees."""
    listener = await connect()
    await listener.next("snapshot")
    await server.say("The tavern door creaks open. A cold wind follows the stranger inside.")
    chunks = [await listener.next("audio_chunk_ready", timeout=60) for _ in range(2)]
    assert [c["text"] for c in chunks] == ["The tavern door creaks open.", "A cold wind follows the stranger inside."]
    async with aiohttp.ClientSession() as http:
        for chunk in chunks:
            async with http.get(server.base_url + chunk["url"], params={"format": "flac"}) as resp:
                pcm = read_flac(await resp.read())
            async with http.get(server.base_url + chunk["url"]) as resp:
                assert resp.headers["Content-Type"] == "audio/mpeg"
                mp3 = decode_mp3(await resp.read(), pcm.sample_rate, tmp_path)
            decoded_ms = len(pcm.samples) * 1000 / pcm.sample_rate
            assert pcm.sample_rate == 22050
            assert abs(decoded_ms - chunk["duration_ms"]) <= 1
            assert chunk["duration_ms"] > 800  # a real sentence, not a blip
            assert np.sqrt(np.mean(pcm.samples.astype(float) ** 2)) > 300  # speech, not silence
            mp3_ms = len(mp3) * 1000 / pcm.sample_rate
            assert abs(mp3_ms - decoded_ms) < 5  # the LAME header lets the decoder trim delay and padding


async def test_piper_narration_is_as_loud_as_music(server, connect):
    """Narration is leveled to the same EBU R128 target as tracks, so the two sit at the same loudness."""
    listener = await connect()
    await listener.next("snapshot")
    await server.say(
        "The caravan crosses the desert at night. The stars are bright and the sand is cold. "
        "Nobody speaks until the oasis comes into view."
    )
    chunks = [await listener.next("audio_chunk_ready", timeout=60) for _ in range(3)]
    async with aiohttp.ClientSession() as http:
        parts = []
        for chunk in chunks:
            async with http.get(server.base_url + chunk["url"], params={"format": "flac"}) as resp:
                parts.append(read_flac(await resp.read()).samples)
    speech = Pcm(np.concatenate(parts), 22050)
    assert abs(measure_lufs(speech) - server.station.config.music.target_lufs) <= 2


HOSTILE_BUT_SPEAKABLE = {
    "right-to-left": "שלום עולם. مرحبا بالعالم.",
    "markup": '<speak><prosody rate="x-fast">Run</prosody></speak> <script>alert(1)</script> & done.',
    "bidi override": "\u202eThe innkeeper smiles.\u202c",
    "control characters inside": "The bell\x07 rings\x1b[31m twice.",  # NUL is refused (400): no database takes it
    "emoji inside": "The dragon \U0001f409 lands.",
    "one long word": "Ah" + "h" * 280 + ".",
}


@pytest.mark.parametrize("text", HOSTILE_BUT_SPEAKABLE.values(), ids=HOSTILE_BUT_SPEAKABLE.keys())
async def test_piper_takes_hostile_text_without_harm(server, connect, text):
    """Odd but valid text is spoken, or fails with a reason; either way the next narration plays."""
    listener = await connect()
    await listener.next("snapshot")
    resp = await server.say(text)
    assert resp.status == 202
    ended = await end_of(listener, (await resp.json())["request_id"])
    if ended["type"] == "request_failed":
        assert ended["reason"]  # explained
    follow_up = await server.say("All is well.")
    assert (await end_of(listener, (await follow_up.json())["request_id"]))["type"] == "request_played"
    status, health = await server.get_json("/healthz")
    assert status == 200 and health["status"] == "ok"


async def end_of(listener, request_id: str) -> dict:
    """The request_played or request_failed of this request."""
    async with asyncio.timeout(90):
        while True:
            message = json.loads(await listener.ws.recv())
            listener.messages.append(message)
            if message["type"] in ("request_played", "request_failed") and message["request_id"] == request_id:
                return message
