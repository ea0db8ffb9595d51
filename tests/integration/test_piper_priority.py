"""The real Piper voice synthesizes at a lower scheduling priority than the server's own threads."""

import os
import threading
from pathlib import Path

import pytest

from tts.piper_engine import SYNTHESIS_NICE, PiperEngine

pytestmark = pytest.mark.piper


def nice_by_thread() -> dict[int, int]:
    """Every thread of this process and its nice value (Linux: each thread has its own)."""
    found = {}
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        found[int(task.name)] = int(stat[stat.rindex(")") + 2 :].split()[16])
    return found


async def test_synthesis_threads_run_below_the_servers_priority_and_the_loop_keeps_its_own(tmp_path):
    loop_thread = threading.get_native_id()
    own = os.getpriority(os.PRIO_PROCESS, loop_thread)
    before = set(nice_by_thread())
    engine = PiperEngine(window_ms=1000, cache_dir=tmp_path)
    try:
        pcm = await engine.synthesize("The lanterns of the harbour flicker in the fog.")
        started = {tid: nice for tid, nice in nice_by_thread().items() if tid not in before}
    finally:
        await engine.close()
    assert pcm.samples.size > pcm.sample_rate // 2, "no speech came out"
    # the synthesis worker and onnxruntime's own worker threads, started by the loading thread
    assert len(started) >= 2, f"expected the engine's threads to be running, found {started}"
    assert set(started.values()) == {min(19, own + SYNTHESIS_NICE)}, f"threads and their nice values: {started}"
    assert os.getpriority(os.PRIO_PROCESS, loop_thread) == own, "the event loop's thread lost priority"
