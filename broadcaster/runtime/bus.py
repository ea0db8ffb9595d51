"""The event bus: one ordered stream of wire messages per channel, with a bounded history.

Theory of operation. A channel has one owner at a time, the process that runs its clock.
The owner publishes each step's messages (the dicts web/messages.py builds) in one batch,
with its **epoch**: the fencing number of its lease, which grows each time the owner
changes. The bus numbers the messages with consecutive per-channel **sequence numbers**
and refuses a batch whose epoch is lower than the highest it has seen on that channel
(`StaleEpoch`): an owner that lost its lease without noticing cannot announce anything.

Every message is kept in a bounded history, under a **generation**: an id that changes
whenever the history is lost (a Redis that restarted empty), after which the numbers start
again from 1. A `Position` (generation, seq) therefore names one message for good.

A subscriber hands the bus a callback and, if it had one, the position it got to. The bus
calls the callback with `Batch`es of the messages that follow, in order, each exactly once.
Whenever it cannot guarantee that (no position given, a position too old for the history, a
history that was lost), it calls it with a `Reset` instead: forget what you had; here is the
channel's latest stored snapshot (or None when the bus has no snapshot that its history can
bring up to date), and the batches that follow continue right after it. The owner can store
a snapshot with any publish, atomically with it, so that a process that is not the owner can
answer a new listener: the snapshot at seq S, then the messages after S.

Callbacks are called synchronously, one after another, and must not block: a consumer that
works at its own pace takes them through a `Mailbox`, which cuts it off when it falls too far
behind and lets it resume from where it got to, so it never holds up the others.

`InProcessBus` is the embedded default (one process, no Redis): publishing calls the
callbacks at once, with no await and no copy. `db/redis_bus.py` keeps the streams in Redis.
"""

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import islice
from typing import Any, Protocol

from broadcaster.errors import BroadcasterError

log = logging.getLogger(__name__)

Message = dict[str, Any]  # one wire message, as web/messages.py builds it; never changed once published
DEFAULT_HISTORY = 1000  # messages kept per channel: a few minutes of a busy channel's steps


class BusError(BroadcasterError):
    """Something went wrong on the event bus."""


class StaleEpoch(BusError):
    """A publish carried an epoch lower than one the channel has already seen: its owner was replaced."""

    def __init__(self, channel: str, epoch: int, highest: int):
        super().__init__(
            f"channel {channel!r} has seen epoch {highest}; a publish with epoch {epoch} is stale and was refused"
        )
        self.channel = channel
        self.epoch = epoch
        self.highest = highest


class BusUnavailable(BusError):
    """The bus's store cannot be reached now; nothing was published, or it is not known whether it was."""


class ResetReason(StrEnum):
    FRESH = "fresh"  # subscribed without a position, or before the channel had a history
    BEHIND = "behind"  # the history no longer holds everything after the position
    LOST = "lost"  # the position belongs to a history that is gone (or to none at all)


class HistoryGap(BusError):
    """The messages after a position cannot be replayed; take a snapshot instead."""

    def __init__(self, channel: str, since: "Position", reason: ResetReason):
        super().__init__(f"channel {channel!r} cannot replay what follows seq {since.seq}: history {reason}")
        self.channel = channel
        self.since = since
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Position:
    generation: str  # "" = no history yet
    seq: int  # the last message had; 0 = none


NOWHERE = Position("", 0)


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    epoch: int
    message: Message


@dataclass(frozen=True, slots=True)
class Snapshot:
    generation: str
    seq: int  # the state after this message
    epoch: int
    state: Message

    @property
    def position(self) -> Position:
        return Position(self.generation, self.seq)


@dataclass(frozen=True, slots=True)
class Batch:
    """Messages that follow, in order, the last thing the subscriber was given."""

    channel: str
    generation: str
    entries: tuple[Entry, ...]

    @property
    def position(self) -> Position:
        return Position(self.generation, self.entries[-1].seq)


@dataclass(frozen=True, slots=True)
class Reset:
    """Continuity is broken: start over from `snapshot` (None: the bus has no usable one)."""

    channel: str
    position: Position  # the snapshot's, or the head's when there is no snapshot
    reason: ResetReason
    snapshot: Snapshot | None


Delivery = Batch | Reset
Handler = Callable[[Delivery], None]


class Subscription(Protocol):
    channel: str

    @property
    def position(self) -> Position:
        """What the subscriber has been given so far."""

    def close(self) -> None:
        """Stop delivering; the handler is not called again."""


class EventBus(Protocol):
    async def publish(
        self,
        channel: str,
        epoch: int,
        messages: Sequence[Message],
        snapshot: Message | None = None,
        batch_id: str | None = None,
    ) -> Position:
        """Append `messages` as one batch and, if given, store `snapshot` as the state after them.
        Returns the position of the last message. Raises StaleEpoch, or BusUnavailable. A retry
        with the same `batch_id` as a publish that landed is not appended again."""

    async def snapshot(self, channel: str) -> Snapshot | None:
        """The latest stored snapshot (it may be older than the latest message)."""

    async def replay(self, channel: str, since: Position) -> list[Entry]:
        """The messages after `since`, up to the latest. Raises HistoryGap when they are not all kept."""

    async def subscribe(self, channel: str, handler: Handler, since: Position | None = None) -> Subscription:
        """Deliver what follows `since` to `handler`, then every new batch. The first deliveries (a
        replay, or a Reset) are made before this returns; None for `since` always starts with a Reset."""

    async def close(self) -> None: ...


def deliver(handler: Handler, delivery: Delivery) -> None:
    """Call a subscriber's handler; one that fails must not stop the others."""
    try:
        handler(delivery)
    except Exception:
        log.exception("event bus: a subscriber of %s failed on a delivery", delivery.channel)


def check_epoch(epoch: int) -> None:
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ValueError(f"expected an epoch that is an integer >= 0, got {epoch!r}")


# -- the embedded bus ----------------------------------------------------------


@dataclass(eq=False)
class _LocalSubscription:
    log: "_Log"
    handler: Handler
    position: Position
    closed: bool = False

    @property
    def channel(self) -> str:
        return self.log.channel

    def give(self, delivery: Delivery) -> None:
        if not self.closed:
            self.position = delivery.position
            deliver(self.handler, delivery)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.log.subscribers.remove(self)


@dataclass(eq=False)
class _Log:
    channel: str
    history: int
    generation: str = field(default_factory=lambda: secrets.token_hex(6))
    head: int = 0
    highest_epoch: int = 0
    snapshot: Snapshot | None = None
    entries: deque[Entry] = field(init=False)
    subscribers: list[_LocalSubscription] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.entries = deque(maxlen=self.history)

    def after(self, seq: int) -> list[Entry] | None:
        """The kept entries after `seq`, or None if some of them are gone."""
        missed = self.head - seq
        if missed > len(self.entries):
            return None
        return list(islice(self.entries, len(self.entries) - missed, None))

    def resumable(self, since: Position | None) -> bool:
        """Whether `since` is a place in this history (NOWHERE is its start, unless a snapshot is kept)."""
        if since is None:
            return False
        if since == NOWHERE:
            return self.snapshot is None
        return since.generation == self.generation and since.seq <= self.head

    def catch_up(self, since: Position | None) -> list[Delivery]:
        """What a subscriber at `since` must be given to be level with the head."""
        if self.resumable(since):
            missed = self.after(since.seq)
            if missed is not None:
                return [Batch(self.channel, self.generation, tuple(missed))] if missed else []
        reason = reset_reason(since, self.generation, self.head)
        snapshot = self.snapshot
        missed = None if snapshot is None else self.after(snapshot.seq)
        if missed is None:
            return [Reset(self.channel, Position(self.generation, self.head), reason, None)]
        reset = Reset(self.channel, snapshot.position, reason, snapshot)
        return [reset, Batch(self.channel, self.generation, tuple(missed))] if missed else [reset]


def reset_reason(since: Position | None, generation: str, head: int) -> ResetReason:
    """Why a subscriber at `since` cannot simply be given what follows."""
    if since is None or since == NOWHERE:
        return ResetReason.FRESH
    if since.generation == generation and since.seq <= head:
        return ResetReason.BEHIND
    return ResetReason.LOST


class InProcessBus:
    """The bus of a single process: histories in memory, callbacks called inside `publish`."""

    def __init__(self, history: int = DEFAULT_HISTORY):
        if history < 1:
            raise ValueError(f"expected a history of at least 1 message, got {history}")
        self.history = history
        self._logs: dict[str, _Log] = {}

    def _log(self, channel: str) -> _Log:
        found = self._logs.get(channel)
        if found is None:
            found = self._logs[channel] = _Log(channel, self.history)
        return found

    def publish_now(
        self, channel: str, epoch: int, messages: Sequence[Message], snapshot: Message | None = None
    ) -> Position:
        """`publish` without the coroutine, for callers that cannot await (the embedded announce path)."""
        check_epoch(epoch)
        log_ = self._log(channel)
        if epoch < log_.highest_epoch:
            raise StaleEpoch(channel, epoch, log_.highest_epoch)
        log_.highest_epoch = epoch
        first = log_.head + 1
        entries = tuple(Entry(seq, epoch, message) for seq, message in enumerate(messages, first))
        log_.entries.extend(entries)
        log_.head += len(entries)
        if snapshot is not None:
            log_.snapshot = Snapshot(log_.generation, log_.head, epoch, snapshot)
        if entries:
            batch = Batch(channel, log_.generation, entries)
            for subscriber in list(log_.subscribers):
                subscriber.give(batch)
        return Position(log_.generation, log_.head)

    async def publish(
        self,
        channel: str,
        epoch: int,
        messages: Sequence[Message],
        snapshot: Message | None = None,
        batch_id: str | None = None,
    ) -> Position:
        return self.publish_now(channel, epoch, messages, snapshot)  # in process: nothing is ever retried

    async def snapshot(self, channel: str) -> Snapshot | None:
        found = self._logs.get(channel)
        return None if found is None else found.snapshot

    async def replay(self, channel: str, since: Position) -> list[Entry]:
        log_ = self._log(channel)
        if log_.resumable(since):
            missed = log_.after(since.seq)
            if missed is not None:
                return missed
        raise HistoryGap(channel, since, reset_reason(since, log_.generation, log_.head))

    def subscribe_now(self, channel: str, handler: Handler, since: Position | None = None) -> _LocalSubscription:
        log_ = self._log(channel)
        subscription = _LocalSubscription(log_, handler, since or NOWHERE)
        for delivery in log_.catch_up(since):
            subscription.give(delivery)
        log_.subscribers.append(subscription)
        return subscription

    async def subscribe(self, channel: str, handler: Handler, since: Position | None = None) -> Subscription:
        return self.subscribe_now(channel, handler, since)

    async def close(self) -> None:
        for log_ in self._logs.values():
            for subscription in list(log_.subscribers):
                subscription.close()


# -- a consumer at its own pace ----------------------------------------------------


class Mailbox:
    """Deliveries on a bounded queue, for a consumer that awaits between them.

    When `size` deliveries are waiting, the consumer is too slow: its subscription is closed
    and the queue emptied, so the bus and the other subscribers never wait on it. Its next
    `get` subscribes again from the last position it took, which replays what it missed from
    the history, or resets it when the history no longer reaches back that far.
    """

    def __init__(self, bus: EventBus, channel: str, size: int = 256, since: Position | None = None):
        if size < 2:
            raise ValueError(f"expected room for at least 2 deliveries (a reset and its batch), got {size}")
        self.bus = bus
        self.channel = channel
        self.size = size
        self.position = since  # of the last delivery taken
        self.overflows = 0
        self._queue: deque[Delivery] = deque()
        self._arrived = asyncio.Event()
        self._subscription: Subscription | None = None

    def _put(self, delivery: Delivery) -> None:
        if len(self._queue) >= self.size:
            self.overflows += 1
            self._queue.clear()
            self._cut()
        else:
            self._queue.append(delivery)
        self._arrived.set()

    def _cut(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
        self._subscription = None

    async def get(self) -> Delivery:
        while not self._queue:
            if self._subscription is None:
                self._subscription = await self.bus.subscribe(self.channel, self._put, self.position)
                continue
            self._arrived.clear()
            await self._arrived.wait()
        delivery = self._queue.popleft()
        self.position = delivery.position
        return delivery

    def close(self) -> None:
        self._cut()
        self._queue.clear()


# -- an owner's publishes, in order, through outages ----------------------------------


@dataclass
class _Pending:
    epoch: int
    messages: Sequence[Message]
    snapshot: Message | None
    batch_id: str = field(default_factory=lambda: secrets.token_hex(8))


class Outbox:
    """A channel owner's publishes, made in order by a task per channel, so that a step never
    waits on the bus and an outage delays announcements instead of losing them.

    A publish that fails because the bus is away is retried (with the same batch id, so one that
    landed without its reply is not appended twice) until it succeeds, backing off up to 2 s. One
    refused as stale means another process owns the channel now: the rest of the channel's
    pending publishes are dropped and `on_stale(channel)` is called, so the owner steps down.
    At most `limit` publishes wait per channel; past that the oldest are dropped (logged), and
    listeners who missed them are reset when they catch up.
    """

    def __init__(self, bus: EventBus, on_stale: Callable[[str], None], limit: int = 10_000):
        self.bus = bus
        self.on_stale = on_stale
        self.limit = limit
        self.dropped = 0
        self._pending: dict[str, deque[_Pending]] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._idle: dict[str, asyncio.Event] = {}

    def put(self, channel: str, epoch: int, messages: Sequence[Message], snapshot: Message | None = None) -> None:
        queue = self._pending.setdefault(channel, deque())
        if len(queue) >= self.limit:
            queue.popleft()
            self.dropped += 1
            log.error("channel %s: the event bus has been away too long; an announcement was dropped", channel)
        queue.append(_Pending(epoch, messages, snapshot))
        self._idle.setdefault(channel, asyncio.Event()).clear()
        if channel not in self._tasks:
            task = asyncio.create_task(self._drain(channel), name=f"outbox:{channel}")
            self._tasks[channel] = task
            task.add_done_callback(lambda done: self._tasks.pop(channel) if self._tasks.get(channel) is done else None)

    async def _drain(self, channel: str) -> None:
        queue, idle, delay_s = self._pending[channel], self._idle[channel], 0.05
        while queue:
            item = queue[0]
            try:
                await self.bus.publish(channel, item.epoch, item.messages, item.snapshot, batch_id=item.batch_id)
            except BusUnavailable:
                log.warning("channel %s: event bus unreachable; %d announcement(s) waiting", channel, len(queue))
                await asyncio.sleep(delay_s)
                delay_s = min(2.0, delay_s * 2)
                continue
            except StaleEpoch as exc:
                log.warning("channel %s: %s", channel, exc)
                queue.clear()
                self.on_stale(channel)
                break
            delay_s = 0.05
            if queue and queue[0] is item:
                queue.popleft()
        idle.set()

    def waiting(self, channel: str) -> int:
        return len(self._pending.get(channel, ()))

    async def flushed(self, channel: str) -> None:
        """Wait until everything put for the channel so far has been published (or dropped)."""
        if self.waiting(channel):
            await self._idle[channel].wait()

    def forget(self, channel: str) -> None:
        """Drop what waits for a channel this process no longer owns, and stop publishing it: were the
        channel taken back later, its new announcements must not wait behind a drain of the old ones."""
        self._pending.pop(channel, None)
        if (task := self._tasks.pop(channel, None)) is not None:
            task.cancel()
        if (idle := self._idle.pop(channel, None)) is not None:
            idle.set()  # whoever waited for the old ones to go out stops waiting

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
