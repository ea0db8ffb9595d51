"""Cluster-wide audience: how many listeners each channel has on every process, and what they report.

Counts. Every process writes its own listener count per channel into one Redis hash per channel
(a field per process, with the time it stops counting), and reads the others' fields back, once a
round. Counts shown to listeners and the lead that follows the audience use the cluster total. A
process that dies stops counting when its fields expire (three rounds).

Reports. A listener says when it had a chunk ready to play (`ready_at_ms`); only the channel's
owner tunes the lead from those. A process that does not own the channel batches its listeners'
reports and posts them to the owner's internal address every REPORT_EVERY_S.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from broadcaster.runtime.bus import BusUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

ROUND_S = 1.0
EXPIRES_ROUNDS = 3
REPORT_EVERY_S = 0.1
MAX_REPORTS = 500  # per channel per flush: the lead needs a sample, not every listener


class Audience:
    def __init__(
        self,
        redis: Callable[[], "Redis | None"],
        prefix: str,
        me: Callable[[], str],
        local: Callable[[str], int],
        channels: Callable[[], set[str]],
        changed: Callable[[str], None],
    ):
        self.redis = redis
        self.prefix = prefix
        self.me = me  # this process's id, as its fields are named
        self.local = local  # this process's listeners of a channel
        self.channels = channels  # the channels to count: those with listeners here, or run here
        self.changed = changed  # the total of a channel changed because of other processes
        self.others: dict[str, int] = {}
        self._task: asyncio.Task | None = None

    def key(self, channel: str) -> str:
        return f"{self.prefix}:{{{channel}}}:audience"

    def total(self, channel: str) -> int:
        return self.local(channel) + self.others.get(channel, 0)

    async def total_now(self, channel: str) -> int:
        """The cluster total for one who asks here: a channel this process neither runs nor has
        listeners of is not counted in its rounds, so its hash is read now (the last round's
        figure if Redis is away)."""
        # Imported here: web/api.py imports this module, and one server never loads Redis's client (7 MB).
        from redis.exceptions import RedisError

        redis = self.redis()
        if redis is None or channel in self.channels():
            return self.total(channel)
        try:
            fields = await redis.hgetall(self.key(channel))
        except (OSError, ConnectionError, RedisError) as exc:
            log.debug("listener count of %s not read: %s", channel, exc)
            return self.total(channel)
        others, _ = self._others_in(fields, int(time.time() * 1000))
        return self.local(channel) + others

    def _others_in(self, fields: dict[str, str], now_ms: int) -> tuple[int, list[str]]:
        """The live count of the other processes in a channel's hash, and the fields that expired."""
        others, stale = 0, []
        for member, value in fields.items():
            count, _, expires = value.partition(" ")
            if member == self.me():
                continue
            if int(expires or 0) < now_ms:
                stale.append(member)
            else:
                others += int(count or 0)
        return others, stale

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audience")

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except (BusUnavailable, OSError, ConnectionError) as exc:
                log.debug("audience round skipped: %s", exc)
            except Exception:
                log.exception("audience round failed")
            await asyncio.sleep(ROUND_S)

    async def round(self) -> None:
        redis = self.redis()
        if redis is None:
            return
        now_ms = int(time.time() * 1000)
        until_ms = now_ms + int(EXPIRES_ROUNDS * ROUND_S * 1000)
        names = sorted(self.channels() | set(self.others))
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hset(self.key(name), self.me(), f"{self.local(name)} {until_ms}")
                pipe.expire(self.key(name), int(EXPIRES_ROUNDS * ROUND_S) + 1)
                pipe.hgetall(self.key(name))
            replies = await pipe.execute()
        for name, fields in zip(names, replies[2::3]):
            others, stale = self._others_in(fields, now_ms)
            if stale:
                await redis.hdel(self.key(name), *stale)
            if others != self.others.get(name, 0):
                self.others[name] = others
                self.changed(name)
            if not others and name not in self.channels():
                self.others.pop(name, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        redis = self.redis()
        if redis is not None:
            try:  # this process's listeners are gone: stop counting them at once
                async with redis.pipeline(transaction=False) as pipe:
                    for name in self.channels():
                        pipe.hdel(self.key(name), self.me())
                    await pipe.execute()
            except Exception:
                log.info("could not clear this process's listener counts; they expire by themselves")


Send = Callable[[str, list[list]], Awaitable[None]]  # channel, [[chunk_id, ready_at_ms], ...]


class Reports:
    """Listeners' ready reports for channels run elsewhere, batched to their owners."""

    def __init__(self, send: Send):
        self.send = send
        self.waiting: dict[str, list[list]] = {}
        self._task: asyncio.Task | None = None
        self.sent = 0
        self.lost = 0

    def add(self, channel: str, chunk_id: str, ready_at_ms: int) -> None:
        batch = self.waiting.setdefault(channel, [])
        if len(batch) < MAX_REPORTS:
            batch.append([chunk_id, ready_at_ms])
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush_soon(), name="ready-reports")

    async def _flush_soon(self) -> None:
        await asyncio.sleep(REPORT_EVERY_S)
        waiting, self.waiting = self.waiting, {}
        for channel, batch in waiting.items():
            try:
                await self.send(channel, batch)
                self.sent += len(batch)
            except Exception as exc:  # a takeover under way: these reports are a sample, not a record
                self.lost += len(batch)
                log.debug("ready reports for %s not delivered: %s", channel, exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
