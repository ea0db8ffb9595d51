"""A feed hands each listener a snapshot and then exactly the messages after it: no gap, no repeat.

The bus is the in-process one, driven by hand; the hub and listeners record what they were given."""

import asyncio

from broadcaster.runtime.bus import Batch, Entry, InProcessBus, Position, Reset, ResetReason, Snapshot
from web.feed import RESYNC, ChannelFeed, Feeds
from web.messages import refresh_snapshot, takeover_json


class Seen:
    def __init__(self, connection_id: str = "c1"):
        self.connection_id = connection_id
        self.channel = "table"
        self.got: list[dict] = []

    def send(self, message: dict) -> bool:
        self.got.append(message)
        return True


class Hub:
    def __init__(self):
        self.listeners: dict[str, set] = {}
        self.dropped: list[tuple] = []

    def add(self, listener) -> None:
        self.listeners.setdefault(listener.channel, set()).add(listener)

    def broadcast(self, channel: str, *messages: dict) -> None:
        for listener in self.listeners.get(channel, ()):
            listener.got.extend(messages)

    def total(self, channel: str) -> int:
        return len(self.listeners.get(channel, ()))

    def drop(self, listener, code: int, reason: bytes, quiet: bool = False) -> None:
        self.listeners[listener.channel].discard(listener)
        self.dropped.append((listener, code))


def state(n: int) -> dict:
    return {"server_time_ms": 0, "now_playing": None, "queue": [{"n": n}], "recent": [], "repeat": "off"}


def step(n: int) -> dict:
    return {"type": "step", "n": n}


async def test_a_listener_joining_from_an_older_snapshot_gets_the_messages_since_then_once():
    bus, hub = InProcessBus(), Hub()
    feeds = Feeds(bus, hub, lambda: 1000)
    feed = await feeds.feed("table")
    bus.publish_now("table", 1, [step(1)], state(1))
    older = await bus.snapshot("table")  # a snapshot at seq 1, read before two more steps
    bus.publish_now("table", 1, [step(2)], state(2))
    bus.publish_now("table", 1, [step(3)], state(3))

    listener = Seen()

    async def fetch():
        return older

    await feed.join(listener, fetch)
    assert [m.get("n") for m in listener.got[1:]] == [2, 3]
    assert listener.got[0]["queue"] == [{"n": 1}] and listener.got[0]["type"] == "snapshot"
    bus.publish_now("table", 1, [step(4)], state(4))
    assert [m.get("n") for m in listener.got[1:]] == [2, 3, 4]


async def test_a_snapshot_ahead_of_the_feed_waits_for_the_feed_to_catch_up():
    hub = Hub()
    feed = ChannelFeed("table", hub, lambda: 1000)
    feed.deliver(Batch("table", "g", (Entry(1, 1, step(1)),)))
    ahead = Snapshot("g", 2, 1, state(2))
    listener = Seen()

    async def fetch():
        return ahead

    joining = asyncio.create_task(feed.join(listener, fetch))
    await asyncio.sleep(0.05)
    assert not joining.done() and not listener.got  # message 2 has not reached this process yet
    feed.deliver(Batch("table", "g", (Entry(2, 1, step(2)), Entry(3, 1, step(3)))))
    await joining
    assert listener.got[0]["queue"] == [{"n": 2}]
    assert [m.get("n") for m in listener.got[1:]] == [3]


async def test_a_reset_resends_each_listener_a_snapshot_or_closes_it_when_there_is_none():
    hub = Hub()
    feed = ChannelFeed("table", hub, lambda: 5000)
    first, second = Seen("c1"), Seen("c2")
    hub.add(first)
    hub.add(second)
    feed.deliver(Reset("table", Position("h", 7), ResetReason.LOST, Snapshot("h", 7, 2, state(7))))
    assert first.got[-1]["type"] == "snapshot" and first.got[-1]["connection_id"] == "c1"
    assert first.got[-1]["server_time_ms"] == 5000 and second.got[-1]["queue"] == [{"n": 7}]
    feed.deliver(Reset("table", Position("k", 0), ResetReason.LOST, None))
    assert {code for _, code in hub.dropped} == {RESYNC} and len(hub.dropped) == 2


def test_a_refreshed_snapshot_says_where_the_timeline_is_now():
    chunks = [
        {"chunk_id": "a" * 16, "starts_at_ms": 1000, "duration_ms": 500},
        {"chunk_id": "b" * 16, "starts_at_ms": 1600, "duration_ms": 500},
    ]
    stored = {**state(0), "now_playing": {"request_id": "r", "chunks": chunks, "position": None}}
    assert refresh_snapshot(stored, 1200)["now_playing"]["position"] == {"chunk_id": "a" * 16, "offset_ms": 200}
    assert refresh_snapshot(stored, 1550)["now_playing"]["position"] == {"chunk_id": "b" * 16, "offset_ms": -50}
    assert refresh_snapshot(stored, 2200)["now_playing"]["position"] is None
    assert refresh_snapshot(stored, 2200)["server_time_ms"] == 2200
    assert stored["now_playing"]["position"] is None  # the stored state is not changed


async def test_a_takeover_resynchronises_every_listener_and_a_joiner_replaying_it_alike():
    """A new owner's takeover message is never sent as is: each listener gets a snapshot of the state
    it carries, in its place among the other messages, and so does a listener joining from before it."""
    bus, hub = InProcessBus(), Hub()
    feeds = Feeds(bus, hub, lambda: 1000)
    feed = await feeds.feed("table")
    bus.publish_now("table", 1, [step(1)], state(1))
    before = await bus.snapshot("table")
    here = Seen("here")
    hub.add(here)
    bus.publish_now("table", 2, [step(2), takeover_json(state(9)), step(3)], state(9))
    assert [m["type"] for m in here.got] == ["step", "snapshot", "step"]
    assert here.got[1]["connection_id"] == "here" and here.got[1]["queue"] == [{"n": 9}]

    joiner = Seen("joiner")

    async def fetch():
        return before

    await feed.join(joiner, fetch)
    assert [m["type"] for m in joiner.got] == ["snapshot", "step", "snapshot", "step"]
    assert joiner.got[2]["connection_id"] == "joiner" and joiner.got[2]["queue"] == [{"n": 9}]
