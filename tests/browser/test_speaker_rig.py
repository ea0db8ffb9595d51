"""The speaker rig itself (tests/speakers.py) keeps every channel's samples in place: what a steady
player writes into a listener's sink is recorded on that listener's channel alone, sample for sample.
And it hears a sample when PulseAudio's own latency report says it plays. The sync measurements
(test_sync_output.py, bench/sync_output.py) put every shift they hear on the pages because of this."""

import asyncio
import shutil
import subprocess

import numpy as np
import pytest
from speakers import RATE, PulseServer, click_onsets, clicks_at_reported_times, clicks_off_ms, stop_recording

pytestmark = pytest.mark.speakers(3)

PERIOD = RATE // 10  # a click every 100 ms
SECONDS = 8
DRAIN = 4  # the last clicks move as the player drains its stream at the end


def click_track() -> bytes:
    track = np.zeros(RATE * SECONDS, dtype="<i2")
    burst = (np.sin(np.arange(48) * 0.9) * 20_000).astype("<i2")
    for start in range(0, len(track) - len(burst), PERIOD):
        track[start : start + len(burst)] = burst
    return track.tobytes()


def play(pulse: PulseServer, listeners: list[int]) -> None:
    """Clicks into each listener's sink from pacat, a player that writes steadily and a second ahead
    (so that load on the machine cannot starve it)."""
    command = ["pacat", "--playback", "--raw", "--rate=48000", "--channels=1", "--format=s16le", "--latency-msec=1000"]
    players = [
        subprocess.Popen([*command, f"--device=listener{i}"], stdin=subprocess.PIPE, env=pulse.client_env(i))
        for i in listeners
    ]
    track = click_track()
    for player in players:  # pacat takes the whole track and plays it at the sink's pace
        player.stdin.write(track)
        player.stdin.close()
    for player in players:
        assert player.wait(SECONDS + 20) == 0


async def test_a_steady_player_is_recorded_in_place_on_its_own_channel(pulse):
    if shutil.which("pacat") is None:
        pytest.fail("pacat is needed (apt-get install pulseaudio-utils, which pactl comes with)")
    recorder = pulse.recorder()
    await asyncio.to_thread(recorder.start)
    await asyncio.sleep(1.5)  # the recorder's first second is what the sink rendered before
    await asyncio.to_thread(play, pulse, [0, 1])
    await asyncio.sleep(0.5)
    recording = await stop_recording(recorder, pulse)

    for listener in (0, 1):
        onsets = click_onsets(recording.samples[:, listener], PERIOD // 2)[:-DRAIN]
        periods = np.diff(onsets)
        assert len(periods) >= SECONDS * 10 - 2 * DRAIN, f"listener {listener}: {len(onsets)} clicks recorded"
        exact = float(np.mean(periods == PERIOD))
        assert exact >= 0.9, f"listener {listener}: {exact:.0%} of clicks {PERIOD} frames apart, {periods}"
        drift_ms = (onsets[-1] - onsets[0] - PERIOD * len(periods)) / RATE * 1000
        assert abs(drift_ms) <= 1, f"listener {listener}: its clicks moved {drift_ms:+.2f} ms over the track"
    silent = np.abs(recording.samples[:, 2].astype(np.int32)).max()
    assert silent < 100, f"listener 2 played nothing, but its channel recorded a peak of {silent}"


async def test_a_sample_is_recorded_when_pulseaudio_reports_it_plays(pulse):
    recorder = pulse.recorder()
    await asyncio.to_thread(recorder.start)
    await asyncio.sleep(1.5)
    reported = await asyncio.to_thread(clicks_at_reported_times, pulse, 1, 8)
    recording = await stop_recording(recorder, pulse)

    off_ms = clicks_off_ms(recording, 1, reported)
    assert len(off_ms) == len(reported) >= 14, f"{len(reported)} clicks played, {len(off_ms)} heard"
    assert abs(np.mean(off_ms)) < 0.5, f"clicks heard {np.mean(off_ms):+.2f} ms from PulseAudio's account: {off_ms}"
    assert max(map(abs, off_ms)) < 1.5, f"a click heard far from PulseAudio's account: {off_ms}"
