"""Queues the items of the config's [[schedule]] at the minutes their cron expressions name."""

import asyncio
import contextlib
import logging
from datetime import datetime

from broadcaster.config import ScheduleEntry
from broadcaster.core.cron import Cron, parse_cron
from broadcaster.errors import BroadcasterError

from .clock import Clock

log = logging.getLogger(__name__)

MINUTE_MS = 60_000


class Scheduler:
    def __init__(self, station, entries: tuple[ScheduleEntry, ...], clock: Clock):  # noqa: ANN001
        self.station = station
        self.entries: list[tuple[ScheduleEntry, Cron]] = [(e, parse_cron(e.cron)) for e in entries]
        self.clock = clock
        self.last_minute: int | None = None
        self._moved = asyncio.Event()

    async def run(self) -> None:
        while True:
            now = self.clock()
            await self.tick(now)
            self._moved.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout((MINUTE_MS - now % MINUTE_MS) / 1000 + 0.05):
                    await self._moved.wait()

    def clock_moved(self) -> None:
        """The clock was stepped: look at it again now, not at the next minute's turn."""
        self._moved.set()

    async def tick(self, now_ms: int) -> list[ScheduleEntry]:
        """Queue what is due in the minute containing `now_ms`, once per minute; returns what fired."""
        minute = now_ms // MINUTE_MS
        if minute == self.last_minute:
            return []
        self.last_minute = minute
        when = datetime.fromtimestamp(minute * 60)
        due = [entry for entry, cron in self.entries if cron.matches(when)]
        for entry in due:
            await self._queue(entry)
        return due

    async def _queue(self, entry: ScheduleEntry) -> None:
        if self.station.clustered and entry.channel not in self.station.runners:
            # In a cluster the channel's owner queues it, once; a channel nobody has is said by each process.
            if await self.station.store.channel(entry.channel) is None:
                log.warning("schedule %r on %s could not queue its item: no such channel", entry.cron, entry.channel)
            return
        try:
            if entry.say:
                await self.station.submit(entry.channel, entry.say, over=entry.over)
            else:
                path = self.station.music_file(entry.track)
                await self.station.add_track(entry.channel, path, path.name)
            log.info("schedule %r queued an item on %s", entry.cron, entry.channel)
        except BroadcasterError as exc:  # a missing channel or file must not stop the other entries
            log.warning("schedule %r on %s could not queue its item: %s", entry.cron, entry.channel, exc)
        except Exception:  # nor may anything else stop the schedule
            log.exception("schedule %r on %s failed", entry.cron, entry.channel)
