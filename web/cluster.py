"""Cluster mode's pieces, wired together: the Redis event bus, channel ownership, forwarding.

Started with the app when `[cluster] redis_url` is set (docs/cluster.md). Until `advertise` is
given this process's internal address (once its sites listen), it takes no channel: it serves
listeners of every channel from the bus and forwards producers to the owners.
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from broadcaster.config import Config
from broadcaster.runtime.bus import Outbox
from broadcaster.runtime.ownership import NODE, ChannelOwnership
from broadcaster.runtime.runner import ChannelRunner
from broadcaster.runtime.station import Station
from broadcaster.runtime.telemetry import Telemetry
from db.leases import Leases
from db.redis_bus import RedisBus
from db.store import Store

from .audience import Audience, Reports
from .fanout import Hub
from .feed import FeedHooks, Feeds
from .forward import HOPS, PEER, Forwarder
from .messages import queue_state_json, takeover_json

log = logging.getLogger(__name__)


CLEANUP = "cleanup"  # the lease of the one process that cleans up (purges, stale records)
CLEANUP_MARGIN_MS = 5_000


class Cluster:
    def __init__(self, config: Config, store: Store, hub: Hub, clock: Callable[[], int], metrics: Telemetry, node: str):
        c = config.cluster
        self.config = config
        self.clock = clock
        self.lease_ms = int(c.lease_s * 1000)
        self.bus = RedisBus(c.redis_url, prefix=c.redis_prefix, history=c.history)
        self.outbox = Outbox(self.bus, on_stale=self._refused)
        self.metrics = metrics
        hooks = FeedHooks(self._learn, lambda reason: metrics.feed_resets.labels(reason).inc())
        self.feeds = Feeds(self.bus, hub, clock, hooks)
        self.leases = Leases(store.engine)
        self.store = store
        self.station: Station | None = None
        self.ownership: ChannelOwnership | None = None
        self.node = node  # this process, in leases, listener counts and connection records
        self.forwarder = Forwarder(self.leases, lambda: self.node, self._secret, c.lease_s, metrics.forwarded.inc)
        self._reconnects_counted = 0
        self.hub = hub
        self.audience = Audience(
            lambda: self.bus.client, c.redis_prefix, lambda: self.node, hub.count, self._counted, hub.others_changed
        )
        hub.others = lambda channel: self.audience.others.get(channel, 0)
        self.reports = Reports(self._send_reports)
        self._secret_value: str | None = None
        self._task: asyncio.Task | None = None
        self._keeper: asyncio.Task | None = None
        self._lettings: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.bus.start()
        await self.forwarder.start()
        self.audience.start()

    def _counted(self) -> set[str]:
        here = {name for name, group in self.hub.listeners.items() if group}
        return here | (set(self.station.runners) if self.station else set())

    async def _send_reports(self, channel: str, reports: list[list]) -> None:
        url = await self.forwarder.owner_url(channel)
        headers = {PEER: await self._secret(), HOPS: "1"}
        async with self.forwarder.session.post(
            f"{url}/api/channels/{channel}/ready", json={"reports": reports}, headers=headers
        ) as answer:
            await answer.read()

    def _learn(self, chunk_id: str, request_id: str, channel: str) -> None:
        if self.station is not None:
            self.station.learn_chunk(chunk_id, request_id, channel)

    def attach(self, station: Station) -> None:
        self.station = station
        station.on_lost = lambda name: self._let_go(name, "a write was refused: another server owns it now")
        station.cleanup_turn = self._cleanup_turn

    def announce(self, runner: ChannelRunner, messages: list[dict[str, Any]]) -> None:
        """A step's messages onto the bus, with the channel's state after them (for new listeners)."""
        if runner.lost:
            return
        self.outbox.put(runner.name, runner.epoch, messages, queue_state_json(runner.channel, self.clock()))

    def advertise(self, url: str) -> None:
        """This process takes requests from its peers at `url`: start taking channels."""
        station = self.station
        self.ownership = ChannelOwnership(
            self.leases,
            self._channel_names,
            lambda: set(station.runners) - station.on_air(),
            self._adopt,
            self._handed_over,
            self.lease_ms,
            url,
            holder=self.node,
        )
        self._task = asyncio.create_task(self.ownership.run(), name="channel-ownership")
        self._keeper = asyncio.create_task(self._keep_snapshots(), name="snapshot-keeper")
        log.info("cluster member at %s: taking a share of the channels", url)

    async def _channel_names(self) -> list[str]:
        return [row.name for row in await self.store.channels()]

    async def _adopt(self, name: str, lease) -> None:  # noqa: ANN001
        await self.station.adopt(name, lease)
        self.metrics.ownership_changes.labels("gained").inc()
        runner = self.station.runners[name]
        async with runner.saved:  # the state every listener starts again from, whatever the last owner told them
            self.announce(runner, [takeover_json(queue_state_json(runner.channel, self.clock()))])

    async def _keep_snapshots(self) -> None:
        """Every round, give the bus a snapshot of each channel run here that it has none of under
        this owner: after Redis restarted empty, new listeners and reset feeds need one to start from."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            for name, runner in list(self.station.runners.items()):
                try:
                    stored = await self.bus.snapshot(name)
                except Exception:  # Redis is away: the outbox keeps what is announced meanwhile
                    break
                if (stored is None or stored.epoch < runner.epoch) and not self.outbox.waiting(name):
                    async with runner.saved:
                        self.announce(runner, [])

    async def _cleanup_turn(self) -> bool:
        """Whether this process cleans up this round: the holder of the cleanup lease, which it keeps
        while it lives. It also closes the connection records left open by processes that are gone
        (one process's restart closes only its own)."""
        # Held across two rounds plus a margin: a slow purge or a busy machine must not hand the duty
        # to another process between this process's rounds (two cleaners would only waste work).
        hold_ms = int(self.config.cleanup.interval_s * 1000) * 2 + CLEANUP_MARGIN_MS
        if await self.leases.acquire(CLEANUP, self.node, hold_ms) is None:
            return False
        live = {holding.holder for holding in (await self.leases.live(NODE)).values()}
        now = self.clock()
        closed = await self.store.close_connections_of_others(live | {self.node}, now - 2 * self.lease_ms, now)
        if closed:
            log.info("closed %d connection records of server processes that are gone", closed)
        return True

    async def _handed_over(self, name: str) -> None:
        await self.station.let_go(name)
        self.metrics.ownership_changes.labels("lost").inc()
        try:  # what the channel announced last goes out before its lease is released
            async with asyncio.timeout(1):
                await self.outbox.flushed(name)
        except TimeoutError:
            pass
        self.outbox.forget(name)

    def _refused(self, name: str) -> None:
        self._let_go(name, "its announcements were refused: another server owns it now")

    def _let_go(self, name: str, why: str) -> None:
        if self.ownership is None:
            return
        task = asyncio.create_task(self.ownership.let_go(name, why))
        self._lettings.add(task)
        task.add_done_callback(self._lettings.discard)

    async def _secret(self, fresh: bool = False) -> str:
        """The secret peers prove themselves with, read again when asked (Redis may have restarted
        empty and the first process to ask made a new one)."""
        if self._secret_value is None or fresh:
            self._secret_value = await self.bus.shared_secret("peer")
        return self._secret_value

    def observe(self) -> None:
        """Bring the gauges and counters read from elsewhere up to date (at each scrape of /metrics)."""
        self.metrics.announcements_waiting.set(sum(self.outbox.waiting(name) for name in self.station.runners))
        self.metrics.bus_reconnects.inc(self.bus.reconnects - self._reconnects_counted)
        self._reconnects_counted = self.bus.reconnects

    async def close(self) -> None:
        """Hand every channel over (so the others take them at once), then stop."""
        for task in (self._task, self._keeper):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*self._lettings, return_exceptions=True)
        if self.ownership is not None:
            await self.ownership.close()
        await self.outbox.close()
        await self.reports.close()
        await self.audience.close()
        self.feeds.close()
        await self.forwarder.close()
        await self.bus.close()
