"""The shared synthesis queue: urgent sentences first, otherwise first come, first served."""

import asyncio

import numpy as np
import pytest

from broadcaster.errors import GenerationError
from broadcaster.runtime.synthesis import URGENT_MS, SynthesisQueue
from tts.engine import Pcm, TtsEngine


class GatedEngine(TtsEngine):
    """Each sentence finishes when the test says so; records the order they were started in."""

    name = "gated"
    sample_rate = 1000

    def __init__(self, parallelism: int = 1):
        self.parallelism = parallelism
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Future] = {}

    async def synthesize(self, text: str) -> Pcm:
        self.started.append(text)
        self.gates[text] = asyncio.get_running_loop().create_future()
        return await self.gates[text]

    def finish(self, text: str, audio_ms: int = 1000) -> None:
        self.gates[text].set_result(Pcm(np.zeros(audio_ms, dtype=np.int16), self.sample_rate))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_urgent_deadline_jumps_ahead_of_earlier_requests():
    engine, now = GatedEngine(), 10_000
    queue = SynthesisQueue(engine, lambda: now)
    tasks = [
        asyncio.create_task(queue.speak("first")),
        asyncio.create_task(queue.speak("new channel")),
        asyncio.create_task(queue.speak("relaxed", now + 60_000)),
        asyncio.create_task(queue.speak("on the air", now + URGENT_MS - 1)),
    ]
    await settle()
    for text in ("first", "on the air", "new channel", "relaxed"):
        assert engine.started[-1] == text
        engine.finish(text)
        await settle()
    assert [len((await t).samples) for t in tasks] == [1000] * 4


async def test_a_cancelled_sentence_never_reaches_the_engine():
    engine = GatedEngine()
    queue = SynthesisQueue(engine, lambda: 0)
    first = asyncio.create_task(queue.speak("first"))
    dropped = asyncio.create_task(queue.speak("dropped"))
    last = asyncio.create_task(queue.speak("last"))
    await settle()
    dropped.cancel()
    engine.finish("first")
    await settle()
    engine.finish("last")
    await asyncio.gather(first, last)
    assert engine.started == ["first", "last"]


async def test_parallel_workers_and_errors_reach_the_caller():
    engine = GatedEngine(parallelism=2)
    queue = SynthesisQueue(engine, lambda: 0)
    a, b = asyncio.create_task(queue.speak("a")), asyncio.create_task(queue.speak("b"))
    await settle()
    assert engine.started == ["a", "b"]
    engine.gates["a"].set_exception(GenerationError("no voice"))
    engine.finish("b")
    with pytest.raises(GenerationError):
        await a
    await b


async def test_live_capacity_follows_the_measured_speed():
    engine = GatedEngine(parallelism=2)
    queue = SynthesisQueue(engine, lambda: 0)
    assert queue.live_capacity() == 1  # nothing measured: one at a time
    queue._measure(Pcm(np.zeros(10_000, dtype=np.int16), 1000), 1.0)  # 10 s of audio in 1 s
    assert queue.live_capacity() == int(10 * 2 * 0.6)


async def test_close_leaves_nothing_running_and_takes_no_more_work():
    """Closing cancels the sentence being made; its ending starts no idle work, and nothing queued
    after the close waits for ever."""
    idled = []

    class Idling(GatedEngine):
        async def idle(self) -> None:
            idled.append(True)

    engine = Idling()
    queue = SynthesisQueue(engine, lambda: 0)
    speaking = asyncio.create_task(queue.speak("one"))
    await settle()
    await queue.close()
    await settle()
    assert idled == [] and not queue._running
    speaking.cancel()
    with pytest.raises(GenerationError, match="stopping"):
        await queue.speak("two")
