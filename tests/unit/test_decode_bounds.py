"""Pieces that bound a decode: track segments, the kept tail of ffmpeg's log, turns at decoding."""

import asyncio
import os
import sys
import time

import numpy as np
import pytest
import soundfile

from broadcaster.runtime.decoders import Decoders, DecodersBusy, ServerStopping
from tts.children import Tail, spawn, stop
from tts.tracks import TRACK_RATE, read_segment, segment_count, segment_samples

SEGMENT = segment_samples()


@pytest.mark.parametrize(
    ("samples", "count"),
    [
        (1, 1),
        (SEGMENT, 1),
        (5 * SEGMENT, 5),
        (5 * SEGMENT + 11, 5),  # an 11-sample tail joins the fifth
        (5 * SEGMENT + TRACK_RATE * 49 // 1000, 5),
        (5 * SEGMENT + TRACK_RATE * 50 // 1000, 6),
        (5 * SEGMENT + 1000 * 44, 6),
    ],
)
def test_a_tail_too_short_to_hear_joins_the_segment_before(samples, count):
    """Segments are whole 5 s pieces, plus the rest as its own unless it is under 50 ms."""
    assert segment_count(samples) == count


def test_the_last_segment_carries_the_folded_tail(tmp_path):
    """Reading the segments of a 25 s + 11 sample master gives every sample once, the tail in the last."""
    samples = 5 * SEGMENT + 11
    master = tmp_path / "track.flac"
    audio = (np.arange(samples, dtype=np.int64) % 30000).astype(np.int16)
    soundfile.write(master, np.stack([audio, audio], axis=1), TRACK_RATE, subtype="PCM_16")
    count = segment_count(samples)
    parts = [read_segment(master, seq, count).samples for seq in range(count)]
    assert [len(p) for p in parts] == [SEGMENT] * 4 + [SEGMENT + 11]
    assert np.array_equal(np.concatenate(parts)[:, 0], audio)


def test_a_log_keeps_only_its_tail():
    """Megabytes of log lines leave a few kilobytes: the last ones."""
    tail = Tail(limit=4096)
    for n in range(100_000):
        tail.add(f"line {n}: non monotonically increasing dts\n".encode())
    text = tail.text()
    assert len(text) <= 4096
    assert text.endswith("line 99999: non monotonically increasing dts\n")


async def test_a_turn_waits_for_a_free_decoder_then_gives_up():
    """With every decoder busy, a caller waits up to wait_s and is refused with a Retry-After."""
    decoders = Decoders(1, wait_s=0.05)
    async with decoders.turn():
        with pytest.raises(DecodersBusy) as refused:
            async with decoders.turn():
                pass
    assert refused.value.status == 503 and refused.value.retry_after_s > 0
    async with decoders.turn():  # free again
        assert decoders.running == 1


async def test_one_channel_holds_at_most_half_the_decoders():
    """A producer uploading a pile of long files leaves a decoder to the other channels (their auto-DJ)."""
    decoders = Decoders(2, wait_s=0.05)
    async with decoders.turn("lobby"):
        with pytest.raises(DecodersBusy, match="a channel may use 1 at once"):
            async with decoders.turn("lobby"):
                pass
        async with decoders.turn("office", patient=True):
            assert decoders.running == 2


async def test_a_patient_turn_waits_as_long_as_it_takes():
    """The auto-DJ's turn is not refused, however long the others take."""
    decoders = Decoders(1, wait_s=0.01)
    order = []

    async def hold() -> None:
        async with decoders.turn():
            await asyncio.sleep(0.05)
            order.append("first")

    first = asyncio.create_task(hold())
    await asyncio.sleep(0)
    async with decoders.turn(patient=True):
        order.append("patient")
    await first
    assert order == ["first", "patient"]


async def test_shutting_down_stops_decodes_and_waits_with_an_answer():
    """cancel_all() ends the decode in progress and the one waiting, each with a 503 to give the client."""
    decoders = Decoders(1, wait_s=10)
    started = asyncio.Event()

    async def decode() -> None:
        async with decoders.turn():
            started.set()
            await asyncio.sleep(60)

    running, waiting = asyncio.create_task(decode()), asyncio.create_task(decode())
    await started.wait()
    await asyncio.sleep(0)
    decoders.cancel_all()
    for task in (running, waiting):
        with pytest.raises(ServerStopping):
            await task
    assert (decoders.running, decoders.waiting) == (0, 0)


async def test_stopping_a_child_that_has_just_exited_keeps_its_exit_status(caplog):
    """With the server's child watcher (pid descriptors, web/serve.py), a child that exits while the
    loop is busy and is then stopped: its status is the real one, and asyncio logs no 'exit status
    already read' warning (Popen's own kill reaped it first, and the watcher reported 255)."""
    if not hasattr(os, "pidfd_open"):
        pytest.skip("no pid descriptors on this system")
    if sys.version_info >= (3, 12):  # asyncio's own default there
        proc = await _spawn_exit_and_stop()
    else:
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        previous = asyncio.get_child_watcher()
        asyncio.set_child_watcher(watcher)
        try:
            proc = await _spawn_exit_and_stop()
        finally:
            asyncio.set_child_watcher(previous)
    assert proc.returncode == 0
    assert "already read" not in caplog.text and "returncode 255" not in caplog.text


async def _spawn_exit_and_stop() -> asyncio.subprocess.Process:
    proc = await spawn("true")
    time.sleep(0.3)  # the child exits while the loop is held: nothing has read its status yet
    await stop(proc)
    return proc
