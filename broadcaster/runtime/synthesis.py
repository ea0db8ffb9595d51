"""One TTS engine shared by every channel, scheduled so that audio already on the air is never late.

Channels ask for sentences with a deadline: the moment the sentence must be ready for its
chunk to start on time (None for audio nobody is waiting on yet, such as the first sentence
of a request). The engine runs `parallelism` sentences at once. A free worker takes the
sentence whose deadline is closest if that deadline is within `URGENT_MS`; otherwise the one
asked for first, so a new channel's first sentence is not starved by channels working ahead.

The queue also measures the engine's speed (seconds of audio per second of work), from which
`live_capacity` says how many requests can be played while still being synthesized; the
station holds further requests back until they are fully synthesized (see Channel.may_stream).
"""

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field

from broadcaster.errors import GenerationError
from tts.engine import Pcm, TtsEngine

from .clock import Clock

URGENT_MS = 3000  # a deadline this close jumps the queue
SPEED_SMOOTHING = 0.2  # weight of the newest speed sample
SAFETY = 0.6  # plan live playback for this share of the measured speed: synthesis times vary


@dataclass(order=True)
class _Job:
    order: tuple = field(compare=True)
    text: str = field(compare=False)
    engine: TtsEngine = field(compare=False)
    deadline_ms: int | None = field(compare=False)
    done: asyncio.Future = field(compare=False)


class SynthesisQueue:
    def __init__(self, engine: TtsEngine, clock: Clock):
        self.engine = engine
        self.clock = clock
        self.workers = max(1, engine.parallelism)
        self.speed: float | None = None  # seconds of audio per second of synthesis, per worker
        self._waiting: list[_Job] = []
        self._seq = itertools.count()
        self._busy = 0
        self._running: set[asyncio.Task] = set()
        self._closed = False

    async def speak(self, text: str, deadline_ms: int | None = None, engine: TtsEngine | None = None) -> Pcm:
        """`engine`: another voice than the default (tts/voices.py); voices share the workers."""
        if self._closed:
            raise GenerationError("the server is stopping")
        done = asyncio.get_running_loop().create_future()
        job = _Job((next(self._seq),), text, engine or self.engine, deadline_ms, done)
        heapq.heappush(self._waiting, job)
        self._dispatch()
        try:
            return await asyncio.shield(job.done)
        except asyncio.CancelledError:
            job.done.cancel()  # still waiting: it is skipped; already running: its result is dropped
            raise

    def live_capacity(self) -> int:
        """How many requests can be on the air while their sentences are still being made."""
        if self.speed is None:
            return 1
        return max(1, int(self.speed * self.workers * SAFETY))

    @property
    def backlog(self) -> int:
        return len(self._waiting) + self._busy

    def _dispatch(self) -> None:
        if self._closed:  # nothing new starts that close() would not wait for
            return
        while self._busy < self.workers and (job := self._next()) is not None:
            self._busy += 1
            self._start(self._run(job), "synthesize")

    def _start(self, work, name: str) -> None:  # noqa: ANN001
        task = asyncio.create_task(work, name=name)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _next(self) -> _Job | None:
        live = [j for j in self._waiting if not j.done.cancelled()]
        if len(live) != len(self._waiting):
            self._waiting = live
            heapq.heapify(self._waiting)
        if not self._waiting:
            return None
        now = self.clock()
        urgent = [j for j in self._waiting if j.deadline_ms is not None and j.deadline_ms - now < URGENT_MS]
        job = min(urgent, key=lambda j: j.deadline_ms) if urgent else self._waiting[0]
        self._waiting.remove(job)
        heapq.heapify(self._waiting)
        return job

    async def _run(self, job: _Job) -> None:
        try:
            started = time.perf_counter()
            pcm = await job.engine.synthesize(job.text)
            self._measure(pcm, time.perf_counter() - started)
            if not job.done.done():
                job.done.set_result(pcm)
        except Exception as exc:  # the caller decides what a failed sentence means
            if not job.done.done():
                job.done.set_exception(exc)
        finally:
            self._busy -= 1
            self._dispatch()
            if not self.backlog and not self._closed:
                self._start(self.engine.idle(), "synthesis-idle")

    async def close(self) -> None:
        self._closed = True
        for job in self._waiting:
            job.done.cancel()
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    def _measure(self, pcm: Pcm, seconds: float) -> None:
        if seconds <= 0 or pcm.duration_ms <= 0:
            return
        sample = pcm.duration_ms / 1000 / seconds
        self.speed = sample if self.speed is None else self.speed + SPEED_SMOOTHING * (sample - self.speed)
