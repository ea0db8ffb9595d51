"""From the event bus to this process's WebSocket listeners: one feed per channel followed here.

The owner of a channel publishes each step's messages once, on the bus (broadcaster/runtime/bus.py);
every process, the owner included, follows the channels its listeners are on and broadcasts what
arrives to them (web/fanout.py). A listener must never see a gap or a duplicate, so a new one is
given a snapshot that names the message it is current to, then exactly the messages after it:

- Embedded (one process, `InProcessBus`): the bus delivers inside the owner's step, under the
  channel's lock, so a snapshot built under that lock is current to the last message delivered.
- Cluster: the owner stores a snapshot with every publish. A new listener gets the latest one
  (seq S) once this feed has caught up to S, and the messages after S from the feed's own recent
  history, all in one go with no await in between, as it joins the broadcast.

When the bus cannot continue a feed (Redis restarted empty, this process fell too far behind) it
resets it: each listener is sent a fresh snapshot from the reset, or, when the bus has none to
give, is closed so that it reconnects and joins afresh.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from broadcaster.runtime.bus import Batch, Delivery, Entry, EventBus, Position, Reset, Snapshot, Subscription

from .fanout import Hub, Listener
from .messages import TAKEOVER, refresh_snapshot
from .replica import ChannelReplica

log = logging.getLogger(__name__)

KEPT = 512  # recent messages a feed keeps for listeners joining from a slightly older snapshot
JOIN_ATTEMPTS = 5
REACH_S = 5  # a feed this far behind its bus is stuck: the listener is told to try again
RESYNC = 4012  # application close code: the event history was lost; reconnect for a fresh snapshot


class FeedBroken(Exception):
    """No consistent snapshot could be had for a joining listener (the bus is away or resetting)."""


Learn = Callable[[str, str, str], None]  # chunk id, request id, channel: facts about an announced chunk


def _ignore(chunk_id: str, request_id: str, channel: str) -> None:
    pass


def _uncounted(reason: str) -> None:
    pass


@dataclass(frozen=True)
class FeedHooks:
    """What feeds tell the rest of their process (in a cluster): the facts of each announced chunk,
    and each reset, by reason, for the metrics."""

    learn: Learn = _ignore
    count_reset: Callable[[str], None] = _uncounted


class ChannelFeed:
    def __init__(self, channel: str, hub: Hub, clock: Callable[[], int], hooks: FeedHooks = FeedHooks()):
        self.learn, self.count_reset = hooks.learn, hooks.count_reset
        self.channel = channel
        self.hub = hub
        self.clock = clock
        self.position: Position | None = None
        self.recent: deque[Entry] = deque(maxlen=KEPT)
        self.subscription: Subscription | None = None
        self.replica = ChannelReplica(channel)  # what live.mp3 and progressive streams play here (web/replica.py)
        self._moved = asyncio.Event()  # set whenever the position changes

    def deliver(self, delivery: Delivery) -> None:
        if isinstance(delivery, Batch):
            self.recent.extend(delivery.entries)
            step: list[dict[str, Any]] = []
            for entry in delivery.entries:
                message = entry.message
                if message.get("type") == TAKEOVER:
                    self.hub.broadcast(self.channel, *step)
                    step = []
                    self._resynchronise(message["state"])
                    continue
                if message.get("type") == "audio_chunk_ready":
                    self.learn(message["chunk_id"], message["request_id"], self.channel)
                step.append(message)
            self.hub.broadcast(self.channel, *step)
        else:
            self._reset(delivery)
        self._replicate(delivery)
        self.position = delivery.position
        self._moved.set()
        self._moved = asyncio.Event()

    def _replicate(self, delivery: Delivery) -> None:
        try:
            if isinstance(delivery, Batch):
                self.replica.take(entry.message for entry in delivery.entries)
            else:
                self.replica.reset(None if delivery.snapshot is None else delivery.snapshot.state)
        except Exception:  # the replica's bug must not cost the listeners their feed
            log.exception("channel %s: the replica could not follow a delivery", self.channel)

    def _reset(self, reset: Reset) -> None:
        self.recent.clear()
        listeners = list(self.hub.listeners.get(self.channel, ()))
        if listeners:
            self.count_reset(str(reset.reason))
            log.warning(
                "channel %s: event feed reset (%s); %d listener(s) resynchronised",
                self.channel,
                reset.reason,
                len(listeners),
            )
        for listener in listeners:
            if reset.snapshot is None:
                self.hub.drop(listener, RESYNC, b"event history lost: reconnect", quiet=True)
            else:
                listener.send(self._snapshot_for(listener, reset.snapshot.state))

    def _resynchronise(self, state: dict[str, Any]) -> None:
        """Another process took the channel: every listener starts again from its state (a listener
        keeps what it already plays that the snapshot still holds, web/static/listener.js)."""
        listeners = list(self.hub.listeners.get(self.channel, ()))
        if listeners:
            self.count_reset("owner")
            log.info("channel %s: a new owner; %d listener(s) resynchronised", self.channel, len(listeners))
        for listener in listeners:
            listener.send(self._snapshot_for(listener, state))

    def _outgoing(self, listener: Listener, message: dict[str, Any]) -> dict[str, Any]:
        """A message of the history as this listener is sent it."""
        return self._snapshot_for(listener, message["state"]) if message.get("type") == TAKEOVER else message

    def _snapshot_for(self, listener: Listener, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "snapshot",
            "connection_id": listener.connection_id,
            "listeners": self.hub.total(self.channel),
            **refresh_snapshot(state, self.clock()),
        }

    async def join(self, listener: Listener, fetch: Callable[[], Awaitable[Snapshot | None]]) -> None:
        """Send `listener` the latest snapshot and what followed it, and add it to the broadcast."""
        for _ in range(JOIN_ATTEMPTS):
            snapshot = await fetch()
            if snapshot is None:
                await self._wait_move()  # nothing published yet: the owner's first step brings one
                continue
            if not await self._reach(snapshot.position):
                continue
            at = (
                self.position.seq
                if self.position is not None and self.position.generation == snapshot.generation
                else 0
            )
            after = [entry for entry in self.recent if entry.seq > snapshot.seq] if at else []
            if (after and after[0].seq != snapshot.seq + 1) or (not after and at != snapshot.seq):
                continue  # this feed no longer holds every message since the snapshot: a newer one
            listener.send(self._snapshot_for(listener, snapshot.state))
            for entry in after:
                listener.send(self._outgoing(listener, entry.message))
            self.hub.add(listener)
            return
        raise FeedBroken(f"channel {self.channel!r}: no snapshot matched the event feed; try again")

    async def _reach(self, position: Position) -> bool:
        """Wait until this feed has delivered `position`; False if it cannot (another history: refetch)."""
        try:
            async with asyncio.timeout(REACH_S):
                while not self._past(position):
                    other = self.position is not None and self.position.generation != position.generation
                    await self._moved.wait()
                    if other and not self._past(position):
                        return False  # the feed or the snapshot is in another history: fetch again
            return True
        except TimeoutError:
            return False

    def _past(self, position: Position) -> bool:
        here = self.position
        if position.seq == 0:  # a snapshot before any message: nothing can have come before it
            return here is None or here.seq == 0 or here.generation == position.generation
        return here is not None and here.generation == position.generation and here.seq >= position.seq

    async def _wait_move(self) -> None:
        try:
            async with asyncio.timeout(1):
                await self._moved.wait()
        except TimeoutError:
            pass


class Feeds:
    """The feeds of the channels this process's listeners are on, each subscribed once."""

    def __init__(self, bus: EventBus, hub: Hub, clock: Callable[[], int], hooks: FeedHooks = FeedHooks()):
        self.hooks = hooks
        self.bus = bus
        self.hub = hub
        self.clock = clock
        self.feeds: dict[str, ChannelFeed] = {}
        self._opening: dict[str, asyncio.Future] = {}

    async def feed(self, channel: str) -> ChannelFeed:
        found = self.feeds.get(channel)
        if found is not None:
            return found
        opening = self._opening.get(channel)
        if opening is None:
            opening = self._opening[channel] = asyncio.ensure_future(self._open(channel))
            opening.add_done_callback(lambda _: self._opening.pop(channel, None))
        return await asyncio.shield(opening)

    async def _open(self, channel: str) -> ChannelFeed:
        feed = ChannelFeed(channel, self.hub, self.clock, self.hooks)
        feed.subscription = await self.bus.subscribe(channel, feed.deliver)
        self.feeds[channel] = feed
        return feed

    def follow_now(self, channel: str) -> ChannelFeed:
        """The feed of a channel, subscribed at once: only with a bus that subscribes without waiting."""
        found = self.feeds.get(channel)
        if found is None:
            found = self.feeds[channel] = ChannelFeed(channel, self.hub, self.clock, self.hooks)
            found.subscription = self.bus.subscribe_now(channel, found.deliver)
        return found

    def close(self) -> None:
        for feed in self.feeds.values():
            if feed.subscription is not None:
                feed.subscription.close()
        self.feeds.clear()
