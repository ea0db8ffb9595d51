"""Drives one channel's core: feeds it the clock, its generation worker and submissions.

Every change to the core happens under one lock, is written to the database,
and only then announced, so anything a listener was told survives a restart
(unless the database is down, in which case playing on wins; see `_save`).
"""

import asyncio
import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

from broadcaster import logs
from broadcaster.core.channel import RECENT_LIMIT, Channel
from broadcaster.core.events import ChunkScheduled, Event, RequestCancelled, RequestFailed
from broadcaster.core.lead import LeadTuner
from broadcaster.core.model import Request
from broadcaster.errors import BadInput, BroadcasterError, GenerationError
from db.leases import Lease, LeaseLost
from db.store import ChannelState, Store

from .clock import Clock
from .generator import ChunkMaker

log = logging.getLogger(__name__)
T = TypeVar("T")

Publish = Callable[[str, list[Event]], None]
SAVE_RETRY_S = (0.05, 0.2, 0.5)
LEAD_WAKE_MS = 100  # a thousand listeners report on a first sentence at once: one new lead per 0.1 s is enough


class QueueFull(BadInput):
    status = 429
    code = "queue_full"
    retry_after_s = 5


class OwnerChanged(BadInput):
    """This process lost the channel to another (its lease lapsed or was taken) mid-request."""

    status = 503
    code = "owner_changed"
    retry_after_s = 1


class ChannelRunner:
    def __init__(
        self,
        channel: Channel,
        channel_id: int,
        store: Store,
        maker: ChunkMaker,
        clock: Clock,
        publish: Publish,
        audience: Callable[[], int] = lambda: 0,
    ):
        self.channel = channel
        self.channel_id = channel_id
        self.store = store
        self.maker = maker
        self.clock = clock
        self.publish = publish
        cfg = channel.config
        floor = cfg.lead_ms if cfg.min_lead_ms is None else min(cfg.min_lead_ms, cfg.lead_ms)
        self.lead = LeadTuner(floor, max(cfg.lead_ms, cfg.max_lead_ms), cfg.lead_ms)
        self.audience = audience  # listeners connected now, for the lead
        self._woken_for_lead_ms = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()  # the deadline may have moved
        self._work = asyncio.Event()  # a request may need audio
        self._changed = asyncio.Event()  # for progressive streams waiting on new chunks
        self._job: asyncio.Task | None = None
        self._job_request: str | None = None
        self._tasks: list[asyncio.Task] = []
        self._unattended: set[asyncio.Task] = set()  # steps finishing after their callers left
        self.after_commit: list[Callable[[ChannelRunner, list[Event]], None]] = []  # station hooks: repeat, auto-DJ
        # In a cluster: the lease this process runs the channel under. Every write proves it is still
        # held (db/leases.py); the first refused one calls `on_lost` and nothing more is announced.
        self.lease: Lease | None = None
        self.on_lost: Callable[[ChannelRunner], None] = lambda runner: None
        self.lost = False

    @property
    def epoch(self) -> int:
        """The fencing epoch announcements carry (0 outside a cluster)."""
        return 0 if self.lease is None else self.lease.epoch

    @property
    def name(self) -> str:
        return self.channel.name

    @property
    def saved(self) -> asyncio.Lock:
        """Held while a step changes the channel and until it is saved: read under it to see only
        saved state (a snapshot must never show what a crash could still take back)."""
        return self._lock

    async def start(self) -> None:
        requests, played_end = await self.store.load_line(self.channel_id, self.name)
        recent = await self.store.load_recent(self.channel_id, self.name, RECENT_LIMIT)
        state = await self.store.channel_state(self.channel_id)
        self.channel.bed, self.channel.fading_beds = state.bed, state.fading_beds
        await self.apply(lambda now: self.channel.restore(requests, played_end, now, state.paused_at_ms, recent))
        # Fresh log ids: the first use of a channel may come from an HTTP request, whose id
        # must not stick to the channel's loops for good.
        self._tasks = [
            asyncio.create_task(
                self._clock_loop(), name=f"clock:{self.name}", context=logs.task_context(channel=self.name)
            ),
            asyncio.create_task(
                self._generate_loop(), name=f"generate:{self.name}", context=logs.task_context(channel=self.name)
            ),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, self._job]:
            if task:
                task.cancel()
        await asyncio.gather(*[t for t in [*self._tasks, self._job] if t], return_exceptions=True)
        await asyncio.gather(*self._unattended, return_exceptions=True)
        self._changed.set()  # whoever waits on this runner looks again (and finds it stopped or lost)

    async def submit(
        self, request: Request, step: Callable[[int], list[Event]] | None = None, max_line: int | None = None
    ) -> int:
        """Queue a request durably; returns its place in line (0 = on the air next or now).

        `step` inserts it somewhere other than the default place (a repeat copy, for one).
        `max_line`: refuse with QueueFull if that many requests are waiting already (checked under
        the lock, so requests submitted at once cannot all slip in under the limit).
        """
        return await self._to_the_end(self._submit(request, step, max_line))

    async def _submit(self, request: Request, step: Callable[[int], list[Event]] | None, max_line: int | None) -> int:
        async with self._lock:
            if max_line is not None and len(self.channel.line) + len(self.channel.overlay) >= max_line:
                raise QueueFull(f"channel {self.name!r} already has {max_line} requests waiting; try again later")
            # Fenced as every other write of an owner's: one whose lease is gone must not queue a row the new
            # owner never loaded (it would surface at the next handover, hours later).
            await self._fenced(self.store.insert_request(request, self.channel_id, self.lease))
            inserted = _saved_state(request)
            events = self._step(step or partial(self.channel.submit, request))
            if not request.chunks and _saved_state(request) == inserted:
                self.channel.dirty.discard(request.request_id)  # the row just inserted says all of it
            await self._commit(events)
            return self.channel.line_position(request.request_id)

    async def apply(self, step: Callable[[int], list[Event]]) -> list[Event]:
        """Run one core step at the current time, persist what changed, announce it."""
        return await self._to_the_end(self._apply(step))

    async def _apply(self, step: Callable[[int], list[Event]]) -> list[Event]:
        async with self._lock:
            events = self._step(step)
            await self._commit(events)
            return events

    async def _to_the_end(self, work: Coroutine[Any, Any, T]) -> T:
        """Run a step to its end even if its caller is cancelled (a client that hung up mid-upload): half
        of one (a row queued without its step, a change saved but never announced nor followed by the
        station's hooks) is worse than one finished for nobody."""
        task = asyncio.ensure_future(work)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                self._unattended.add(task)
                task.add_done_callback(self._unattended_done)
            raise

    def _unattended_done(self, task: asyncio.Task) -> None:
        self._unattended.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None and not isinstance(exc, BroadcasterError):
            log.error("channel %s: a step whose caller had gone failed", self.name, exc_info=exc)

    def _step(self, step: Callable[[int], list[Event]]) -> list[Event]:
        now = self.clock()
        audience = self._refresh_lead(now)
        events = step(now)
        for event in events:
            if isinstance(event, ChunkScheduled):
                self.lead.placed(event.chunk.chunk_id, now, event.chunk.starts_at_ms, audience)
        return events

    def _refresh_lead(self, now: int) -> int:
        """Set the channel's lead for its audience now (between steps: a step sees one lead throughout)."""
        audience = self.audience()
        self.channel.lead_ms = self.lead.lead_ms(now, audience)
        return audience

    def listener_ready(self, chunk_id: str, ready_at_ms: int) -> int | None:
        """A listener had a chunk's audio ready to play at `ready_at_ms`: the lead it needed (None for a
        chunk not placed lately). The clock takes the new lead into account at once."""
        now = self.clock()
        need_ms = self.lead.ready(chunk_id, ready_at_ms, now)
        if need_ms is not None and now - self._woken_for_lead_ms >= LEAD_WAKE_MS:
            self._woken_for_lead_ms = now
            self._wake.set()  # the next request's moment to go on the air may have moved
        return need_ms

    def clock_moved(self) -> None:
        """The clock was stepped (a test's): the next deadline is due sooner, or already past."""
        self._wake.set()

    async def wait_change(self, timeout_s: float) -> None:
        changed = self._changed
        try:
            async with asyncio.timeout(timeout_s):
                await changed.wait()
        except TimeoutError:
            pass

    async def _commit(self, events: list[Event]) -> None:
        await self._save()
        if events:
            self.publish(self.name, events)
        self._changed.set()
        self._changed = asyncio.Event()
        self._wake.set()
        self._work.set()
        for hook in self.after_commit:
            hook(self, events)
        for event in events:
            ended = isinstance(event, (RequestFailed, RequestCancelled))
            if ended and event.request.request_id == self._job_request and self._job:
                self._job.cancel()  # a stalled, failing or cancelled synthesis is abandoned, not awaited

    async def _save(self) -> None:
        """Persist what changed, retrying briefly (a CLI or cron writer may hold the SQLite lock).

        If the database stays unavailable the step is announced anyway and its changes stay
        marked for the next save: the channel keeps playing rather than stalling on storage.
        """
        ids = set(self.channel.dirty)
        channel = self.channel
        state = ChannelState(self.channel_id, channel.paused_at_ms, channel.bed, channel.fading_beds)
        state_dirty = channel.pause_dirty or channel.bed_dirty
        order = [r.request_id for r in channel.line] if channel.order_dirty else None
        channel.pause_dirty = channel.bed_dirty = channel.order_dirty = False  # a change from here marks them again
        for delay_s in (*SAVE_RETRY_S, None):
            try:
                requests = [r for r in map(self.channel.find_request, ids) if r]
                await self._fenced(self.store.save(requests, self.lease, state if state_dirty else None, order))
            except OwnerChanged:
                raise
            except Exception:
                if delay_s is None:
                    log.exception("channel %s: could not save; will retry with the next change", self.name)
                    channel.pause_dirty |= state_dirty  # still to be written
                    channel.order_dirty |= order is not None
                    return
                await asyncio.sleep(delay_s)
            else:
                self.channel.dirty -= ids
                return

    async def _fenced(self, write) -> None:  # noqa: ANN001
        """Run a write; one refused by the fence means another process runs the channel now."""
        if self.lost:
            write.close()
            raise OwnerChanged(f"channel {self.name!r} is being taken over by another server; try again")
        try:
            await write
        except LeaseLost:
            self.lost = True
            log.warning("channel %s: a write was refused, another server owns the channel now", self.name)
            self.on_lost(self)
            raise OwnerChanged(f"channel {self.name!r} is being taken over by another server; try again") from None

    # -- the clock -------------------------------------------------------------

    async def _clock_loop(self) -> None:
        while True:
            self._refresh_lead(self.clock())  # listeners may have come, gone or reported
            deadline = self.channel.next_deadline_ms()
            self._wake.clear()
            timeout = None if deadline is None else max(0, deadline - self.clock()) / 1000
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation that
            # races with the event being set, which left stop() waiting forever.
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
                continue  # something changed: recompute the deadline
            except TimeoutError:
                pass
            try:
                await self.apply(self.channel.tick)
            except OwnerChanged:
                return  # the station stops this runner
            except Exception:  # a bad tick must not stop the channel's clock
                log.exception("channel %s: tick failed", self.name)
                await asyncio.sleep(0.5)

    # -- generation --------------------------------------------------------------

    async def _generate_loop(self) -> None:
        while True:
            self._work.clear()
            request = self.channel.next_job()
            if request is None:
                await self._work.wait()
                continue
            self._job_request = request.request_id
            self._job = asyncio.create_task(
                self._generate(request),
                name=f"job:{request.request_id}",
                context=logs.task_context(channel=self.name, request_id=request.request_id),
            )
            await asyncio.wait([self._job])
            error = None if self._job.cancelled() else self._job.exception()
            self._job = self._job_request = None
            if isinstance(error, OwnerChanged):
                return  # another process runs the channel now; the station stops this runner
            if error is not None:
                log.error(
                    "channel %s: generating %s crashed",
                    self.name,
                    request.request_id,
                    exc_info=error,
                    extra={"request_id": request.request_id},
                )
                await asyncio.sleep(1)  # e.g. the database is unavailable: retry, but not in a tight loop

    async def _generate(self, request: Request) -> None:
        rid = request.request_id
        # Saved and announced while the first sentence is made: not on the way to first audio.
        started = asyncio.create_task(self.apply(partial(self.channel.generation_started, rid)))
        try:
            await self._make_all(request)
        finally:
            try:
                await started
            except KeyError:  # cancelled before its start was recorded: nothing to record, no crash
                pass

    async def _make_all(self, request: Request) -> None:
        rid = request.request_id
        log.info("channel %s: generating request %s (%d sentences)", self.name, rid, len(request.sentences))
        while request.has_work and self.channel.next_job() is request:
            try:
                chunk = await self.maker.make(request, request.next_seq, self.channel.next_chunk_due_ms(request))
            except Exception as exc:  # engine, encoder or disk: any failure fails this request only
                reason = str(exc) if isinstance(exc, (GenerationError, OSError)) else f"TTS engine crashed: {exc!r}"
                log.warning("channel %s: request %s failed: %s", self.name, rid, reason)
                await self.apply(partial(self.channel.generation_failed, rid, reason))
                return
            # Kept even if other work comes first now (talk-over, a move): the loop then lets it go.
            await self.apply(partial(self.channel.chunk_made, chunk))


def _saved_state(request: Request) -> tuple:
    """What Store.save writes of a request besides its chunks."""
    return request.state, request.generation_started_ms, request.finished_at_ms, request.error, request.over
