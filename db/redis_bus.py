"""The event bus (broadcaster/runtime/bus.py) on Redis Streams, for several server processes.

Each channel has two keys in one hash slot:

    <prefix>:{<channel>}:meta   hash: gen, seq (the head), epoch (the highest seen), batch and
                                batch_seq (the last publish, so a retried one is not appended
                                twice), snap, snap_seq and snap_epoch (the latest snapshot)
    <prefix>:{<channel>}:log    stream: one entry per message, id <gen>-<seq>, fields e (epoch)
                                and m (the message's JSON); trimmed with MAXLEN ~ <history>

A publish is one Lua script: it checks the epoch, numbers the messages, appends them and
stores the snapshot, all at once, so no reader ever sees a snapshot without the messages
before it. The generation is Redis's clock in ms when the history began: a history that
starts over (Redis restarted empty, the keys were evicted) gets a larger one, so its entry
ids sort after every old id, and a reader waiting on an old position sees them at once and
notices the change.

Each process reads every channel it follows with one XREAD BLOCK on one connection of its
own, and hands what it reads to its subscribers' callbacks. Catching a subscriber up (a
replay from the history, or a reset with the stored snapshot) is another script, so that a
snapshot and the messages after it are read together. When the connection breaks, the reader
reconnects with backoff and catches every subscriber up from where it got to: a replay if
Redis kept the data, otherwise a reset.
"""

import asyncio
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from broadcaster.runtime.bus import (
    DEFAULT_HISTORY,
    NOWHERE,
    Batch,
    BusUnavailable,
    Delivery,
    Entry,
    Handler,
    HistoryGap,
    Message,
    Position,
    Reset,
    Snapshot,
    StaleEpoch,
    check_epoch,
    deliver,
    reset_reason,
)

log = logging.getLogger(__name__)

REDIS_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)

PUBLISH = """
local meta, log = KEYS[1], KEYS[2]
local epoch = tonumber(ARGV[1])
local state = redis.call('HMGET', meta, 'gen', 'seq', 'epoch', 'batch', 'batch_seq')
local gen, seq = state[1], tonumber(state[2])
if gen and seq > 0 and redis.call('EXISTS', log) == 0 then
  gen = false  -- the history is gone but its counter is not: begin a new one
end
if gen then
  if state[4] == ARGV[3] then
    return {'ok', gen, state[5]}  -- a retry of a publish that landed
  end
  if epoch < tonumber(state[3]) then
    return {'stale', state[3]}
  end
else
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local last = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)[1]
  if last then
    local last_ms = tonumber(string.match(last[1], '^(%d+)'))
    if last_ms >= ms then ms = last_ms + 1 end
  end
  redis.call('DEL', meta, log)
  gen = string.format('%.0f', ms)
  seq = 0
end
for i = 5, #ARGV do
  seq = seq + 1
  redis.call('XADD', log, 'MAXLEN', '~', ARGV[2], gen .. '-' .. seq, 'e', ARGV[1], 'm', ARGV[i])
end
redis.call('HSET', meta, 'gen', gen, 'seq', seq, 'epoch', ARGV[1], 'batch', ARGV[3], 'batch_seq', seq)
if ARGV[4] ~= '' then
  redis.call('HSET', meta, 'snap', ARGV[4], 'snap_seq', seq, 'snap_epoch', ARGV[1])
end
return {'ok', gen, tostring(seq)}
"""

CATCH_UP = """
local meta, log = KEYS[1], KEYS[2]
local state = redis.call('HMGET', meta, 'gen', 'seq', 'snap', 'snap_seq', 'snap_epoch')
local gen, head = state[1], tonumber(state[2])
if not gen or (head > 0 and redis.call('EXISTS', log) == 0) then
  return {'none'}
end
local function after(seq)
  if seq == head then return {} end
  if seq > head then return nil end
  local found = redis.call('XRANGE', log, '(' .. gen .. '-' .. seq, '+')
  if #found == 0 or found[1][1] ~= gen .. '-' .. (seq + 1) then return nil end
  return found
end
-- A reader that knew no history takes this one whole, unless there is a snapshot to start from.
if ARGV[1] == gen or (ARGV[1] == '' and ARGV[2] == '0' and not state[3]) then
  local found = after(tonumber(ARGV[2]))
  if found then return {'resume', gen, tostring(head), found} end
end
if state[3] then
  local found = after(tonumber(state[4]))
  if found then return {'reset', gen, tostring(head), found, state[3], state[4], state[5]} end
end
return {'reset', gen, tostring(head), {}}
"""


class Backoff:
    """Waits between reconnects: doubling from `first_s` up to `cap_s`, each spread by ±20 %."""

    def __init__(self, first_s: float = 0.05, cap_s: float = 2.0, rng: Callable[[], float] = random.random):
        self.first_s = first_s
        self.cap_s = cap_s
        self.rng = rng
        self._next_s = first_s

    def next(self) -> float:
        delay = self._next_s * (0.8 + 0.4 * self.rng())
        self._next_s = min(self.cap_s, self._next_s * 2)
        return delay

    def reset(self) -> None:
        self._next_s = self.first_s


def stream_id(position: Position) -> str:
    return f"{position.generation}-{position.seq}" if position.generation else "0-0"


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def _entry(entry_id: str, fields: dict[str, str] | list[str]) -> tuple[str, Entry]:
    """(generation, entry) of a stream entry, from XREAD (a dict) or from a script (a flat list)."""
    if isinstance(fields, list):
        fields = dict(zip(fields[::2], fields[1::2]))
    generation, _, seq = entry_id.partition("-")
    return generation, Entry(int(seq), int(fields["e"]), json.loads(fields["m"]))


@dataclass(eq=False)
class _Subscription:
    bus: "RedisBus"
    channel: str
    handler: Handler
    since: Position | None  # asked for; the first catch-up starts there
    position: Position = NOWHERE
    closed: bool = False
    ready: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def give(self, delivery: Delivery) -> None:
        if not self.closed:
            self.position = delivery.position
            deliver(self.handler, delivery)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bus._forget(self)


@dataclass(eq=False)
class _Track:
    """One channel the reader follows: where its XREAD resumes, and who gets what it reads."""

    channel: str
    meta: str
    log: str
    read_from: str = "0-0"
    subscribers: list[_Subscription] = field(default_factory=list)


class RedisBus:
    """The event bus on Redis. `start()` before use, `close()` after."""

    def __init__(
        self,
        url: str,
        prefix: str = "bc",
        history: int = DEFAULT_HISTORY,
        block_ms: int = 5000,
        check_s: float = 5.0,
        ready_timeout_s: float = 5.0,
        read_count: int = 1000,
        backoff: Backoff | None = None,
    ):
        if history < 1:
            raise ValueError(f"expected a history of at least 1 message, got {history}")
        self.url = url
        self.prefix = prefix
        self.history = history
        self.block_ms = block_ms
        self.check_s = check_s  # how often generations are compared while nothing arrives
        self.ready_timeout_s = ready_timeout_s
        self.read_count = read_count
        self.backoff = backoff or Backoff()
        self.reconnects = 0
        self._closing = False
        self._connected_once = False
        self._tracks: dict[str, _Track] = {}
        self._by_log: dict[str, _Track] = {}
        self._pending: deque[_Subscription] = deque()
        self._wake = asyncio.Event()
        self._reader_id: int | None = None  # CLIENT ID of the reading connection, while connected
        self._reading = False  # inside XREAD BLOCK
        self._task: asyncio.Task | None = None
        self._cmd: Redis | None = None
        self._reader: Redis | None = None

    @property
    def client(self) -> Redis | None:
        """The connection pool for commands (None before `start`), for other small uses of the same Redis."""
        return self._cmd

    def keys(self, channel: str) -> tuple[str, str]:
        tag = f"{self.prefix}:{{{channel}}}"
        return f"{tag}:meta", f"{tag}:log"

    async def start(self) -> None:
        # Commands may be retried: a publish carries an id, so one that landed is not appended twice.
        self._cmd = Redis.from_url(
            self.url,
            decode_responses=True,
            protocol=2,
            socket_timeout=2,
            socket_connect_timeout=1,
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.025), 3),
        )
        self._reader = Redis.from_url(
            self.url,
            decode_responses=True,
            protocol=2,
            single_connection_client=True,
            socket_timeout=self.block_ms / 1000 + 5,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),  # the reader reconnects by itself, and catches up
        )
        self._publish = self._cmd.register_script(PUBLISH)
        self._catch_up_script = self._cmd.register_script(CATCH_UP)
        self._task = asyncio.create_task(self._run(), name="event-bus-reader")

    async def close(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        # redis-py (8.2) can swallow a cancellation that lands while it connects: cancel until it ends.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=0.05)
        if task is not None and not task.cancelled():
            task.exception()  # retrieved: it is logged where it happened
        for track in list(self._tracks.values()):
            for subscription in list(track.subscribers):
                subscription.close()
        for subscription in self._pending:
            subscription.closed = True
            subscription.ready.cancel()
        self._pending.clear()
        for client in (self._reader, self._cmd):
            if client is not None:
                await client.aclose()
        self._reader = self._cmd = None

    # -- publishing and reading on request ------------------------------------------

    async def publish(
        self,
        channel: str,
        epoch: int,
        messages: Sequence[Message],
        snapshot: Message | None = None,
        batch_id: str | None = None,
    ) -> Position:
        check_epoch(epoch)
        args = [epoch, self.history, batch_id or os.urandom(8).hex(), "" if snapshot is None else json.dumps(snapshot)]
        args.extend(json.dumps(message) for message in messages)
        try:
            reply = await self._publish(keys=self.keys(channel), args=args)
        except REDIS_DOWN as exc:
            raise BusUnavailable(f"could not publish on channel {channel!r}: Redis is unreachable ({exc})") from exc
        if reply[0] == "stale":
            raise StaleEpoch(channel, epoch, int(reply[1]))
        return Position(reply[1], int(reply[2]))

    async def shared_secret(self, name: str) -> str:
        """A random value every process on this Redis agrees on (made by the first to ask)."""
        key = f"{self.prefix}:secret:{name}"
        try:
            found = await self._cmd.get(key)
            if found is None:
                await self._cmd.set(key, os.urandom(24).hex(), nx=True)
                found = await self._cmd.get(key)
            return found
        except REDIS_DOWN as exc:
            raise BusUnavailable(f"could not read the cluster's shared secret: Redis is unreachable ({exc})") from exc

    async def snapshot(self, channel: str) -> Snapshot | None:
        meta, _ = self.keys(channel)
        try:
            generation, state, seq, epoch = await self._cmd.hmget(meta, "gen", "snap", "snap_seq", "snap_epoch")
        except REDIS_DOWN as exc:
            raise BusUnavailable(
                f"could not read channel {channel!r}'s snapshot: Redis is unreachable ({exc})"
            ) from exc
        if generation is None or state is None:
            return None
        return Snapshot(generation, int(seq), int(epoch), json.loads(state))

    async def replay(self, channel: str, since: Position) -> list[Entry]:
        try:
            reply = await self._catch_up_script(keys=self.keys(channel), args=[since.generation, since.seq])
        except REDIS_DOWN as exc:
            raise BusUnavailable(f"could not read channel {channel!r}'s history: Redis is unreachable ({exc})") from exc
        if reply[0] == "resume":
            return [_entry(*item)[1] for item in reply[3]]
        generation, head = (reply[1], int(reply[2])) if reply[0] == "reset" else ("", 0)
        raise HistoryGap(channel, since, reset_reason(since, generation, head))

    # -- subscribing --------------------------------------------------------------------

    async def subscribe(self, channel: str, handler: Handler, since: Position | None = None) -> _Subscription:
        """The reader makes the first deliveries; this returns once it has (BusUnavailable if it
        could not within `ready_timeout_s`)."""
        if self._task is None:
            raise RuntimeError("expected RedisBus.start() before subscribe(), but the bus is not started")
        subscription = _Subscription(self, channel, handler, since, since or NOWHERE)
        self._pending.append(subscription)
        self._wake.set()
        await self._interrupt_read()
        try:
            async with asyncio.timeout(self.ready_timeout_s):
                await asyncio.shield(subscription.ready)
        except TimeoutError:
            subscription.close()
            raise BusUnavailable(
                f"could not subscribe to channel {channel!r} within {self.ready_timeout_s} s: Redis is unreachable"
            ) from None
        return subscription

    def _forget(self, subscription: _Subscription) -> None:
        if subscription in self._pending:
            self._pending.remove(subscription)
            return
        track = self._tracks.get(subscription.channel)
        if track is None or subscription not in track.subscribers:
            return
        track.subscribers.remove(subscription)
        if not track.subscribers:
            del self._tracks[track.channel]
            del self._by_log[track.log]

    async def _interrupt_read(self) -> None:
        """Wake the reader from XREAD BLOCK so that it takes the new subscriber at once. CLIENT
        UNBLOCK misses when it lands just before the XREAD does: try again a few times."""
        for _ in range(50):
            reader_id = self._reader_id
            if reader_id is None or not self._pending:
                return  # not connected (it takes them when it is), or taken already
            if self._reading:
                try:
                    if await self._cmd.client_unblock(reader_id):
                        return
                except REDIS_DOWN:
                    return
            await asyncio.sleep(0.01)

    # -- the reader -------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            try:
                await self._connect()
                await self._serve()
            except REDIS_DOWN as exc:
                self._reader_id = None
                self._reading = False
                delay_s = self.backoff.next()
                log.warning("event bus: lost Redis (%s); reconnecting in %.2f s", exc, delay_s)
                await asyncio.sleep(delay_s)
            except Exception:
                self._reader_id = None
                self._reading = False
                delay_s = self.backoff.next()
                log.exception("event bus: the reader failed; starting it again in %.2f s", delay_s)
                await asyncio.sleep(delay_s)

    async def _connect(self) -> None:
        """(Re)connect, then bring every subscriber level with what Redis holds now."""
        self._reader_id = await self._reader.client_id()
        if self._connected_once:
            self.reconnects += 1
            log.info("event bus: connected to Redis again; catching up %d channels", len(self._tracks))
        for track in list(self._tracks.values()):
            for subscription in list(track.subscribers):
                await self._catch_up(track, subscription, subscription.position)
            self._rewind(track)
        self._connected_once = True
        self.backoff.reset()

    async def _serve(self) -> None:
        next_check = time.monotonic() + self.check_s
        while not self._closing:
            await self._attach_pending()
            if time.monotonic() >= next_check:
                await self._check_generations()
                next_check = time.monotonic() + self.check_s
            self._wake.clear()
            if self._pending:
                continue
            if not self._tracks:
                try:
                    async with asyncio.timeout(self.check_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            streams = {track.log: track.read_from for track in self._tracks.values()}
            self._reading = True
            try:
                reply = await self._reader.xread(streams, count=self.read_count, block=self.block_ms)
            finally:
                self._reading = False
            for track, subscription in self._dispatch(reply or []):
                if not subscription.closed:
                    await self._catch_up(track, subscription, subscription.position)

    async def _attach_pending(self) -> None:
        while self._pending:
            subscription = self._pending[0]
            track = self._tracks.get(subscription.channel)
            if track is None:
                meta, log_key = self.keys(subscription.channel)
                track = _Track(subscription.channel, meta, log_key, read_from="")
            await self._catch_up(track, subscription, subscription.since)
            if self._pending and self._pending[0] is subscription:
                self._pending.popleft()
            if subscription.closed:
                continue
            if track.channel not in self._tracks:
                self._tracks[track.channel] = track
                self._by_log[track.log] = track
            track.subscribers.append(subscription)
            self._rewind(track)
            if not subscription.ready.done():
                subscription.ready.set_result(None)

    def _rewind(self, track: _Track) -> None:
        """Read from no later than the subscriber furthest behind: the others skip what they had."""
        ids = [stream_id(subscription.position) for subscription in track.subscribers]
        if track.read_from:
            ids.append(track.read_from)
        track.read_from = min(ids, key=_id_key) if ids else "0-0"

    async def _catch_up(self, track: _Track, subscription: _Subscription, since: Position | None) -> None:
        asked = since or NOWHERE
        reply = await self._catch_up_script(
            keys=[track.meta, track.log], args=[asked.generation, asked.seq], client=self._reader
        )
        for delivery in _catch_up_deliveries(track.channel, since, reply):
            subscription.give(delivery)

    def _dispatch(self, reply: list) -> list[tuple[_Track, _Subscription]]:
        """Give each subscriber the entries that follow what it had; return those that need catching up."""
        behind = []
        for key, items in reply:
            track = self._by_log.get(key)
            if track is None or not items:
                continue
            track.read_from = items[-1][0]
            entries = [_entry(entry_id, fields) for entry_id, fields in items]
            for subscription in list(track.subscribers):
                run: list[Entry] = []
                had = subscription.position
                for generation, entry in entries:
                    if generation == had.generation and entry.seq <= had.seq:
                        continue  # given already (by a catch-up)
                    if generation == had.generation and entry.seq == had.seq + 1:
                        run.append(entry)
                        had = Position(generation, entry.seq)
                        continue
                    behind.append((track, subscription))  # a gap, or a new history
                    break
                if run:
                    subscription.give(Batch(track.channel, had.generation, tuple(run)))
        return behind

    async def _check_generations(self) -> None:
        """A history can be lost with no new entry to show it (keys deleted, Redis's clock set back)."""
        tracks = list(self._tracks.values())
        if not tracks:
            return
        pipe = self._reader.pipeline(transaction=False)
        for track in tracks:
            pipe.hget(track.meta, "gen")
        generations = await pipe.execute()
        for track, generation in zip(tracks, generations):
            for subscription in list(track.subscribers):
                if subscription.position.generation != (generation or ""):
                    await self._catch_up(track, subscription, subscription.position)
            self._rewind(track)


def _catch_up_deliveries(channel: str, since: Position | None, reply: list[Any]) -> list[Delivery]:
    """What the catch-up script's reply means for a subscriber at `since` (None: a fresh start)."""
    mode = reply[0]
    if mode == "none":  # no history at all
        if since == NOWHERE:
            return []  # and it knew of none
        return [Reset(channel, NOWHERE, reset_reason(since, "", 0), None)]
    generation, head = reply[1], int(reply[2])
    entries = tuple(_entry(*item)[1] for item in reply[3])
    if mode == "resume":
        return [Batch(channel, generation, entries)] if entries else []
    reason = reset_reason(since, generation, head)
    if len(reply) > 4:
        snapshot = Snapshot(generation, int(reply[5]), int(reply[6]), json.loads(reply[4]))
        reset = Reset(channel, snapshot.position, reason, snapshot)
        return [reset, Batch(channel, generation, entries)] if entries else [reset]
    return [Reset(channel, Position(generation, head), reason, None)]
