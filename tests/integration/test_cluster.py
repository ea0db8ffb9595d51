"""Cluster mode with real parts: two servers on one PostgreSQL database and one Redis, in this process.

Each member is a full app on its own loopback ports (public and internal). Only one of them runs
the channel; listeners on both hear one timeline, and a producer may post to either."""

import asyncio
import gzip
import json
import logging
from datetime import datetime
from socket import create_server
from urllib.parse import urlsplit

import aiohttp
import pytest
import websockets
from aiohttp import web
from cluster_members import LEASE_S, Member, owner_of, post, post_while_changing_hands, start_member
from conftest import FAST_TONES, merge
from server_process import free_port

from broadcaster.config import config_from_dict
from broadcaster.runtime.accounts import create_channel
from db.store import Store
from web.app import create_app
from web.keys import CLUSTER, METRICS
from web.messages import QUEUE_LISTED
from web.serve import start_sites

from .test_shared_audio import decoded_seconds


@pytest.fixture
async def cluster(tmp_path, postgres_url, redis_url):
    members: list[Member] = []

    async def start(overrides: dict | None = None) -> Member:
        member = await start_member(tmp_path, postgres_url, redis_url, overrides)
        members.append(member)
        return member

    yield start
    for member in members:
        await member.stop()


class Socket:
    def __init__(self, ws):
        self.ws = ws
        self.messages: list[dict] = []

    async def next(self, kind: str, timeout: float = 10, where=None) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await self.ws.recv())
                self.messages.append(message)
                if message["type"] == kind and (where is None or where(message)):
                    return message


async def listening_on_both(cluster):
    """Two members, the channel "table" (its producer credentials), which of them runs it, the other,
    and a listener on each, past its snapshot."""
    a = await cluster()
    b = await cluster()
    made = await create_channel(a.station.store, "table")
    owner = await owner_of("table", a, b)
    sockets = []
    for member in (a, b):
        sockets.append(Socket(await websockets.connect(member.ws_url("table"))))
        await sockets[-1].next("snapshot")
    return made, owner, b if owner is a else a, sockets


async def test_a_narration_posted_anywhere_is_heard_on_every_member_on_one_timeline(cluster):
    made, owner, other, sockets = await listening_on_both(cluster)
    status, body = await post(other, "table", made.token, "One. Two.")  # to the member that does not run it
    assert status == 202, body
    timelines = []
    for socket in sockets:
        chunks = [
            await socket.next("audio_chunk_ready", where=lambda m: m["request_id"] == body["request_id"])
            for _ in range(2)
        ]
        await socket.next("request_played", where=lambda m: m["request_id"] == body["request_id"])
        timelines.append([(c["chunk_id"], c["starts_at_ms"], c["duration_ms"]) for c in chunks])
    assert timelines[0] == timelines[1]
    for socket in sockets:
        await socket.ws.close()
    assert await metric(owner, "broadcaster_channels_run") == 1
    assert await metric(other, "broadcaster_channels_run") == 0
    assert await metric(other, "broadcaster_cluster_forwarded_requests_total") == 1
    assert await metric(owner, 'broadcaster_cluster_ownership_changes_total{change="gained"}') == 1


async def metric(member: Member, name: str) -> float:
    async with aiohttp.ClientSession() as http:
        async with http.get(member.base_url + "/metrics") as resp:
            text = await resp.text()
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


async def test_a_late_listener_on_a_member_that_does_not_run_the_channel_joins_mid_request(cluster):
    a = await cluster()
    b = await cluster()
    made = await create_channel(a.station.store, "table")
    owner = await owner_of("table", a, b)
    other = b if owner is a else a
    status, body = await post(owner, "table", made.token, "The first sentence is here. " * 3 + "And the last one.")
    assert status == 202, body

    early = Socket(await websockets.connect(owner.ws_url("table")))
    await early.next("snapshot")
    first = await early.next("audio_chunk_ready", where=lambda m: m["request_id"] == body["request_id"])

    late = Socket(await websockets.connect(other.ws_url("table")))
    snapshot = await late.next("snapshot")
    playing = snapshot["now_playing"]
    assert playing["request_id"] == body["request_id"]
    assert first["chunk_id"] in [c["chunk_id"] for c in playing["chunks"]]
    seen = {c["chunk_id"] for c in playing["chunks"]}
    # Every chunk after the snapshot arrives once, and none of those in it arrive again.
    while True:
        message = json.loads(await asyncio.wait_for(late.ws.recv(), 10))
        if message["type"] == "audio_chunk_ready":
            assert message["chunk_id"] not in seen, "a chunk in the snapshot was announced again"
            seen.add(message["chunk_id"])
        if message["type"] == "request_played":
            break
    assert len(seen) == 4
    await early.ws.close()
    await late.ws.close()


async def test_when_the_owner_stops_another_member_takes_the_channel_and_plays_what_was_queued(cluster):
    a = await cluster()
    b = await cluster()
    made = await create_channel(a.station.store, "table")
    owner = await owner_of("table", a, b)
    other = b if owner is a else a
    listener = Socket(await websockets.connect(other.ws_url("table")))
    await listener.next("snapshot")
    status, first = await post(owner, "table", made.token, "Playing now. " * 4)
    assert status == 202
    status, queued = await post(other, "table", made.token, "Queued behind it.")
    assert status == 202, queued

    await listener.next("audio_chunk_ready", where=lambda m: m["request_id"] == first["request_id"])
    await owner.stop()
    assert await owner_of("table", other) is other
    await listener.next("request_played", timeout=15, where=lambda m: m["request_id"] == queued["request_id"])
    await listener.ws.close()


class Follower:
    """A listener that reconnects when closed and keeps what it was told, as the page does."""

    def __init__(self, member: Member, channel: str):
        self.member, self.channel = member, channel
        self.snapshots = 0
        self.played: set[str] = set()
        self.chunks: dict[str, dict] = {}
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                async with websockets.connect(self.member.ws_url(self.channel)) as ws:
                    async for text in ws:
                        self._take(json.loads(text))
            except (websockets.ConnectionClosed, OSError):
                pass
            await asyncio.sleep(0.1)

    def _take(self, message: dict) -> None:
        if message["type"] == "snapshot":
            self.snapshots += 1
            self.played |= {r["request_id"] for r in message["recent"] if r["status"] == "played"}
            for chunk in (message["now_playing"] or {}).get("chunks", []):
                self.chunks[chunk["chunk_id"]] = chunk
        elif message["type"] == "request_played":
            self.played.add(message["request_id"])
        elif message["type"] == "audio_chunk_ready":
            assert message["chunk_id"] not in self.chunks or self.chunks[message["chunk_id"]] == {
                k: v for k, v in message.items() if k in self.chunks[message["chunk_id"]]
            }
            self.chunks[message["chunk_id"]] = message

    async def heard_played(self, request_id: str, timeout_s: float = 20) -> None:
        async with asyncio.timeout(timeout_s):
            while request_id not in self.played:
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_after_redis_restarts_empty_listeners_resync_and_nothing_queued_is_lost(
    tmp_path, postgres_url, own_redis
):
    a = await start_member(tmp_path, postgres_url, own_redis.url)
    b = await start_member(tmp_path, postgres_url, own_redis.url)
    followers = []
    try:
        made = await create_channel(a.station.store, "table")
        owner = await owner_of("table", a, b)
        followers = [Follower(a, "table"), Follower(b, "table")]
        await asyncio.sleep(0.5)
        status, first = await post(owner, "table", made.token, "Before the restart. " * 3)
        assert status == 202
        own_redis.stop()  # its data gone with it
        status, during = await post(owner, "table", made.token, "Posted while Redis was away.")
        assert status == 202, during
        await refused_while_redis_is_away(owner, b if owner is a else a, made.token)
        await asyncio.sleep(1.5)
        own_redis.start()
        for follower in followers:
            await follower.heard_played(during["request_id"])
            assert follower.snapshots >= 2, "the listener was not resynchronised after the history was lost"
        other = b if owner is a else a
        status, after = await post(other, "table", made.token, "Forwarded after the restart.")
        assert status == 202, after  # the peers agree on a new secret
    finally:
        for follower in followers:
            await follower.stop()
        await a.stop()
        await b.stop()


async def refused_while_redis_is_away(owner: Member, other: Member, token: str) -> None:
    """What needs the peers' secret is answered 503 while Redis is away, and queues nothing: a forward
    from the other member, and a peer claim the owner cannot check."""
    async with aiohttp.ClientSession() as http:
        for member, headers in ((other, {}), (owner, {"X-Broadcaster-Peer": "a guess"})):
            async with http.post(
                f"{member.base_url}/api/channels/table/requests",
                json={"text": "Refused while Redis was away."},
                headers={"Authorization": f"Bearer {token}", **headers},
            ) as resp:
                assert resp.status == 503, await resp.text()
                assert (await resp.json())["error"]["code"] == "bus_unavailable"
                assert resp.headers["Retry-After"] == "2"
    line = owner.station.runners["table"].channel.line
    assert not any(r.text.startswith("Refused") for r in line)


async def fetch_status(url: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            await resp.read()
            return resp.status


async def test_while_postgresql_is_away_what_was_announced_plays_nobody_takes_over_and_all_resumes(
    tmp_path, postgres_server, postgres_url, redis_url
):
    a = await start_member(tmp_path, postgres_url, redis_url)
    b = await start_member(tmp_path, postgres_url, redis_url)
    follower = None
    try:
        made = await create_channel(a.station.store, "table")
        owner = await owner_of("table", a, b)
        follower = Follower(b, "table")
        await asyncio.sleep(0.5)
        status, long = await post(owner, "table", made.token, "A sentence that was said before the outage. " * 6)
        assert status == 202
        async with asyncio.timeout(10):
            while not any(c["request_id"] == long["request_id"] for c in follower.chunks.values()):
                await asyncio.sleep(0.05)
        announced = next(c for c in follower.chunks.values() if c["request_id"] == long["request_id"])
        for member in (a, b):  # listeners fetch a chunk as soon as it is announced, on whichever member
            assert await fetch_status(member.base_url + announced["url"]) == 200

        postgres_server.stop()
        try:
            await asyncio.sleep(LEASE_S * 2)  # past the lease: owners step down, nobody can take over
            assert not a.runs("table") and not b.runs("table")
            for member in (a, b):
                async with aiohttp.ClientSession() as http:
                    async with http.post(
                        f"{member.base_url}/api/channels/table/requests",
                        json={"text": "During the outage."},
                        headers={"Authorization": f"Bearer {made.token}"},
                    ) as resp:
                        assert resp.status == 503, await resp.text()
                        assert resp.headers["Retry-After"]
                # audio already made is still served, from every member's memory
                assert await fetch_status(member.base_url + announced["url"]) == 200
            assert follower.task.done() is False
        finally:
            postgres_server.start()

        owner = await owner_of("table", a, b, timeout_s=10)
        await follower.heard_played(long["request_id"], timeout_s=30)
        status, after = await post(owner, "table", made.token, "After the outage.")
        assert status == 202, after
        await follower.heard_played(after["request_id"])
    finally:
        if follower:
            await follower.stop()
        await a.stop()
        await b.stop()


async def test_listener_counts_are_cluster_totals_and_reports_reach_the_owner(cluster):
    a = await cluster()
    b = await cluster()
    made = await create_channel(a.station.store, "table")
    owner = await owner_of("table", a, b)
    other = b if owner is a else a
    sockets = [Socket(await websockets.connect(m.ws_url("table"))) for m in (owner, other, other)]
    for socket in sockets:
        await socket.next("snapshot")
    for socket in sockets:  # each process counts its own and reads the others' once a round
        await socket.next("listeners_changed", timeout=5, where=lambda m: m["listeners"] == 3)

    status, body = await post(other, "table", made.token, "Tell the owner when you are ready.")
    assert status == 202, body
    chunk = await sockets[1].next("audio_chunk_ready")
    await sockets[1].ws.send(
        json.dumps({"type": "audio_played", "chunk_id": chunk["chunk_id"], "ready_at_ms": chunk["starts_at_ms"] - 250})
    )
    await sockets[1].next("ack_recorded")
    needs = owner.app[METRICS].listener_ready
    async with asyncio.timeout(3):  # batched to the owner within a tenth of a second
        while not sum(s.value for m in needs.collect() for s in m.samples if s.name.endswith("_count")):
            await asyncio.sleep(0.05)
    await sockets[2].ws.close()
    await sockets[0].next("listeners_changed", timeout=5, where=lambda m: m["listeners"] == 2)
    for socket in sockets[:2]:
        await socket.ws.close()


async def test_the_queue_view_counts_every_listener_on_a_member_with_none_of_its_own(cluster):
    """A member that neither runs the channel nor has listeners of it does not follow its count in
    its rounds: asked for the queue view, it reads the count then."""
    a = await cluster()
    b = await cluster()
    await create_channel(a.station.store, "table")
    owner = await owner_of("table", a, b)
    other = b if owner is a else a
    socket = Socket(await websockets.connect(owner.ws_url("table")))
    await socket.next("snapshot")
    counts = []
    async with asyncio.timeout(5), aiohttp.ClientSession() as http:  # the owner writes its count once a round
        while not counts or counts[-1] != 1:
            async with http.get(f"{other.base_url}/api/channels/table/audio/queue") as resp:
                assert resp.status == 200
                counts.append((await resp.json())["listeners"])
            await asyncio.sleep(0.1)
    assert "table" not in other.app[CLUSTER].audience.others, "answered without following the channel"
    await socket.ws.close()


async def test_the_queue_view_is_answered_by_any_member_as_the_owner_last_published_it(cluster):
    a = await cluster()
    b = await cluster()
    made = await create_channel(a.station.store, "table")
    owner = await owner_of("table", a, b)
    other = b if owner is a else a
    status, first = await post(owner, "table", made.token, "Playing now, for a little while. " * 3)
    assert status == 202
    status, queued = await post(owner, "table", made.token, "Waiting its turn.")
    assert status == 202
    views = {}
    async with asyncio.timeout(10):
        while True:
            for member in (owner, other):
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"{member.base_url}/api/channels/table/audio/queue") as resp:
                        assert resp.status == 200
                        views[member] = await resp.json()
            playing = [v["now_playing"] and v["now_playing"]["request_id"] for v in views.values()]
            # The two are read moments apart, and a chunk may be placed in between: until they agree.
            if playing == [first["request_id"]] * 2 and agree(views[owner], views[other]):
                break
            await asyncio.sleep(0.1)
    assert [q["request_id"] for q in views[other]["queue"]] == [queued["request_id"]]
    assert other.app[CLUSTER].forwarder.forwarded == 0, "the view was fetched from the owner"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{other.base_url}/api/channels/nowhere/audio/queue") as resp:
            assert resp.status == 404


async def test_a_member_lists_a_long_queue_whole_as_the_owner_does(cluster):
    """The state the owner publishes lists the head of a long queue: asked for the whole queue, another
    member passes the question on to the owner (with the listen key of a private channel, in its header)."""
    a = await cluster()
    b = await cluster()
    made = await create_channel(a.station.store, "table", private=True)
    owner = await owner_of("table", a, b)
    other = b if owner is a else a
    count = QUEUE_LISTED + 3
    ids = []
    for n in range(count):
        status, queued = await post(owner, "table", made.token, f"Item {n} waits its turn for a long while. " * 2)
        assert status == 202
        ids.append(queued["request_id"])
    async with aiohttp.ClientSession() as http:
        queue_url = f"{other.base_url}/api/channels/table/audio/queue"
        async with http.get(queue_url, headers={"X-Listen-Key": made.listen_key}) as resp:
            assert resp.status == 200, await resp.text()
            view = await resp.json()
    assert len(view["queue"]) == view["queue_length"] > QUEUE_LISTED
    assert [q["request_id"] for q in view["queue"]] == ids[count - view["queue_length"] :]
    assert other.app[CLUSTER].forwarder.forwarded == 1, "the whole queue was asked of the owner"


def agree(owner_view: dict, other_view: dict) -> bool:
    """The same chunks on the air and the same requests waiting."""
    return owner_view["now_playing"]["chunks"] == other_view["now_playing"]["chunks"] and [
        q["request_id"] for q in owner_view["queue"]
    ] == [q["request_id"] for q in other_view["queue"]]


async def test_forwarding_headers_from_a_client_are_not_believed(cluster):
    """Only a peer (one that shows the cluster's secret) may say a request was forwarded already, or
    call a route meant for peers; a client that says so is answered as the owner would answer it."""
    a = await cluster()
    b = await cluster()
    made = await create_channel(a.station.store, "table")
    owner = await owner_of("table", a, b)
    other = b if owner is a else a
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{other.base_url}/api/channels/table/requests",
            json={"text": "Forwarded all the same."},
            headers={"Authorization": f"Bearer {made.token}", "X-Broadcaster-Hops": "2"},
        ) as resp:
            assert resp.status == 202, await resp.text()
        for member in (other, owner):  # peers' ready reports: refused from a client by every member
            async with http.post(
                f"{member.base_url}/api/channels/table/ready", json={"reports": [["a" * 16, 1]]}
            ) as resp:
                assert resp.status == 403, await resp.text()
                assert (await resp.json())["error"]["code"] == "forbidden"
        # a peer header of bytes that are not text is a false claim (403), not a 500
        reader, writer = await asyncio.open_connection(*urlsplit(other.base_url).netloc.split(":"))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Broadcaster-Peer: \xff\xfe\r\nConnection: close\r\n\r\n")
        status_line = await reader.readline()
        writer.close()
        assert b" 403 " in status_line, status_line
    assert len(owner.station.runners["table"].channel.line) == 1
    assert other.app[CLUSTER].forwarder.forwarded == 1


async def test_a_compressed_body_is_forwarded_whole(cluster):
    """aiohttp decodes a gzip body before a member passes it on: the owner gets the decoded body, whole."""
    a = await cluster()
    b = await cluster()
    made = await create_channel(a.station.store, "table")
    owner = await owner_of("table", a, b)
    other = b if owner is a else a
    text = " ".join(f"Sentence number {n} of a narration sent compressed." for n in range(16))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{other.base_url}/api/channels/table/requests",
            data=gzip.compress(json.dumps({"text": text}).encode()),
            headers={
                "Authorization": f"Bearer {made.token}",
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
            },
        ) as resp:
            assert resp.status == 202, await resp.text()
            queued = await resp.json()
    assert queued["sentences"] == 16
    assert owner.station.runners["table"].channel.find_request(queued["request_id"]).text == text


async def test_one_member_cleans_up_and_closes_the_records_of_processes_that_are_gone(cluster, postgres_url):
    """Cleanup runs on one member (the holder of the cleanup lease), which also closes the connection
    records a process that died left open; the owner, which did not clean, forgets what was purged."""
    quick = {"cleanup": {"interval_s": 0.3, "retention_days": 1 / 86400}}  # purges what ended a second ago
    a, b = await cluster(quick), await cluster(quick)
    made = await create_channel(a.station.store, "table")
    owner = await owner_of("table", a, b)
    other = b if owner is a else a
    assert await other.station.store.leases.acquire("cleanup", other.app[CLUSTER].node, 60_000)
    cleanups = {owner: 0, other: 0}
    for member in (owner, other):
        member.station.cleanup = counted(member.station.cleanup, cleanups, member)
    gone = Store(postgres_url, holder="elsewhere:4242:0000")
    row = await gone.channel("table")
    gone.open_connection("left-open-by-the-dead", row.id, "10.0.0.9", "a process that died", 1_000)
    await gone.close()  # writes the record
    assert (await a.station.store.connection_times("left-open-by-the-dead"))[1] is None

    listener = Socket(await websockets.connect(owner.ws_url("table")))
    hello = await listener.next("snapshot")
    status, body = await post(owner, "table", made.token, "Short.")
    assert status == 202
    await listener.next("request_played", where=lambda m: m["request_id"] == body["request_id"])
    store, recent = owner.station.store, owner.station.runners["table"].channel.recent
    async with asyncio.timeout(10):
        while (
            any(r.request_id == body["request_id"] for r in recent) or body["request_id"] in await store.request_ids()
        ):
            await asyncio.sleep(0.1)

    left = await store.connection_times("left-open-by-the-dead")
    assert left is None or left[1] is not None, "still open"  # closed (and purged a second later: None)
    assert (await store.connection_times(hello["connection_id"]))[1] is None, "a live listener's record was closed"
    assert cleanups[owner] == 0 and cleanups[other] >= 1
    await listener.ws.close()


def counted(cleanup, counts: dict, member):
    async def counting() -> dict[str, int]:
        counts[member] += 1
        return await cleanup()

    return counting


async def control(member: Member, channel: str, token: str, action: str) -> tuple[int, dict]:
    """A queue control, again after a 503 while the channel changes hands (as `post` does)."""
    async with aiohttp.ClientSession() as http:
        return await post_while_changing_hands(
            http, f"{member.base_url}/api/channels/{channel}/{action}", None, {"Authorization": f"Bearer {token}"}
        )


async def test_a_pause_sent_to_any_member_stops_every_member_and_its_replica(cluster):
    """Pause and resume posted to the member that does not run the channel: the owner's answer comes
    back, listeners of both members hear both, and the other member's replica (which its live.mp3 and
    queue view read) stands still at the pause and moves with the resume."""
    made, owner, other, sockets = await listening_on_both(cluster)
    status, body = await post(other, "table", made.token, "One sentence here. And another one there.")
    assert status == 202, body
    for socket in sockets:
        await socket.next("audio_chunk_ready")

    status, paused = await control(other, "table", made.token, "pause")
    assert status == 200 and paused["paused"] is True
    assert (await control(other, "table", made.token, "pause"))[0] == 409  # the owner's answer, as from the owner
    for socket in sockets:
        assert (await socket.next("channel_paused"))["paused_at_ms"] == paused["paused_at_ms"]
    replica = (await other.app[CLUSTER].feeds.feed("table")).replica
    assert replica.channel.paused_at_ms == paused["paused_at_ms"]

    status, resumed = await control(other, "table", made.token, "resume")
    assert status == 200
    for socket in sockets:
        message = await socket.next("channel_resumed")
        assert message["resumes_at_ms"] == resumed["resumes_at_ms"] and message["shift_ms"] == resumed["shift_ms"]
    assert replica.channel.paused_at_ms is None
    # The owner may place the next sentence's chunk before the replica hears of it: the chunks both
    # have are moved alike.
    owner = await owner_of("table", owner, other)  # under load the channel may have moved meanwhile
    starts = {c.chunk_id: c.starts_at_ms for c in owner.station.runners["table"].channel.line[0].chunks}
    moved = {c.chunk_id: c.starts_at_ms for c in replica.channel.line[0].chunks}
    assert moved and {chunk_id: starts[chunk_id] for chunk_id in moved} == moved
    for socket in sockets:
        await socket.next("request_played", where=lambda m: m["request_id"] == body["request_id"])
        await socket.ws.close()


async def test_an_open_narration_fed_through_a_member_that_does_not_run_it_plays_on_both(cluster):
    """Opened and appended to through the member that does not run the channel: every append reaches the
    owner, both members announce the same chunks, and that member's progressive stream of the request
    stays open until the narration is closed and carries all of it."""
    made, owner, other, sockets = await listening_on_both(cluster)
    headers = {"Authorization": f"Bearer {made.token}"}
    url = f"{other.base_url}/api/channels/table/requests"
    async with aiohttp.ClientSession() as http:
        status, body = await post_while_changing_hands(
            http, url, {"text": "The first part is here. The sec", "open": True}, headers
        )
        assert status == 202, body
        rid = body["request_id"]
        first = [await s.next("audio_chunk_ready", where=lambda m: m["request_id"] == rid) for s in sockets]
        stream = asyncio.create_task(_read(http, f"{other.base_url}/api/audio/stream/{rid}"))
        await asyncio.sleep(1.0)  # the first part has played (under the 1.5 s idle flush): the stream waits
        assert not stream.done()
        status, body = await post_while_changing_hands(
            http, f"{url}/{rid}/text", {"text": "ond part follows.", "final": True}, headers
        )
        assert status == 202 and body["sentences"] == 2, body
        second = [await s.next("audio_chunk_ready", where=lambda m: m["request_id"] == rid) for s in sockets]
        mp3 = await asyncio.wait_for(stream, 15)
    assert first[0] == first[1] and second[0] == second[1]
    assert second[0]["text"] == "The second part follows."
    heard_s = (first[0]["duration_ms"] + second[0]["duration_ms"]) / 1000
    assert await decoded_seconds(mp3) >= heard_s - 0.1
    for socket in sockets:
        await socket.ws.close()


async def _read(http: aiohttp.ClientSession, url: str) -> bytes:
    async with http.get(url) as resp:
        assert resp.status == 200
        return await resp.read()


async def test_a_write_to_a_member_not_running_the_channel_is_answered_as_the_owner_would(cluster):
    """Forwarded at once when the channel has an owner; a channel nobody owns because it does not
    exist is a 404 from the member itself, not a wait for an owner that will never come."""
    a = await cluster()
    b = await cluster()
    made = await create_channel(a.station.store, "table")
    owner = await owner_of("table", a, b)
    other = b if owner is a else a
    headers = {"Authorization": f"Bearer {made.token}"}
    async with aiohttp.ClientSession() as http:
        for name in ("nowhere", "Not A Name!"):
            async with http.post(
                f"{other.base_url}/api/channels/{name}/requests", json={"text": "Lost."}, headers=headers
            ) as resp:
                assert resp.status == 404, await resp.text()
                assert (await resp.json())["error"]["code"] == "not_found"
        async with http.post(
            f"{other.base_url}/api/channels/table/requests", json={"text": "Passed on."}, headers=headers
        ) as resp:
            assert resp.status == 202, await resp.text()
            queued = await resp.json()
        async with http.post(f"{other.base_url}/api/channels/table/requests", json={"text": "No token."}) as resp:
            assert resp.status == 401, await resp.text()
    assert other.app[CLUSTER].forwarder.forwarded == 2
    channel = owner.station.runners["table"].channel
    assert channel.find_request(queued["request_id"]) is not None
    assert len(channel.line) == 1, "the 401 queued nothing"


async def test_a_member_that_cannot_have_its_internal_port_never_listens_on_the_public_one(
    tmp_path, postgres_url, redis_url
):
    """A worker whose internal port is taken fails before it listens anywhere: on the public port it
    shares with the other workers it would take connections, only to drop them as it exits."""
    public = free_port()
    with create_server(("127.0.0.1", 0)) as taken:
        settings = merge(
            FAST_TONES,
            {
                "server": {"database_url": postgres_url, "data_dir": str(tmp_path / "data"), "port": public},
                "cluster": {"redis_url": redis_url, "internal_port": taken.getsockname()[1]},
            },
        )
        config = config_from_dict(settings)
        runner = web.AppRunner(create_app(config))
        await runner.setup()
        try:
            with pytest.raises(OSError):
                await start_sites(runner, config, reuse_port=True)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", public)
        finally:
            await runner.cleanup()


async def test_what_an_owner_saved_but_never_announced_reaches_listeners_through_the_next_owner(cluster):
    """An owner that saved steps and stopped before announcing them (it died, or its announcements
    waited out a Redis outage and were then refused as stale): the next owner's takeover resynchronises
    every listener, so a chunk only the database knows of still reaches them."""
    made, owner, other, sockets = await listening_on_both(cluster)
    for socket in sockets:
        await socket.ws.close()
    follower = Follower(other, "table")
    await asyncio.sleep(0.3)
    owner.app[CLUSTER].outbox.put = lambda *args, **kwargs: None  # from now on it announces nothing
    sentences = " ".join(f"Sentence number {n} of a long narration goes here." for n in range(12))
    status, body = await post(owner, "table", made.token, sentences)
    assert status == 202, body
    runner = owner.station.runners["table"]
    async with asyncio.timeout(10):
        while len(placed := [c.chunk_id for c in runner.channel.line[0].chunks if c.scheduled]) < 2:
            await asyncio.sleep(0.02)
    await owner.stop()  # hands the channel over; the other member takes it, the narration still playing
    try:
        await follower.heard_played(body["request_id"])
        assert set(placed) <= set(follower.chunks), "a chunk only the database knew of never reached the listener"
    finally:
        await follower.stop()


async def test_a_schedule_entry_is_queued_once_by_the_owner_and_one_for_no_channel_is_said(cluster, caplog):
    """[[schedule]] in a cluster: the member running the channel queues the item, the other does not;
    an entry naming no channel was skipped without a word by every member, and is now said."""
    schedule = {
        "schedule": [
            {"channel": "table", "cron": "55 9 * * *", "say": "Stand-up in five minutes."},
            {"channel": "nowhere", "cron": "55 9 * * *", "say": "Lost."},
        ]
    }
    a, b = await cluster(schedule), await cluster(schedule)
    await create_channel(a.station.store, "table")
    owner = await owner_of("table", a, b)
    other = b if owner is a else a
    at_0955 = int(datetime(2026, 11, 23, 9, 55, 20).timestamp() * 1000)
    with caplog.at_level(logging.WARNING, logger="broadcaster.runtime.schedule"):
        for member in (owner, other):
            await member.station.scheduler.tick(at_0955)
    said = [r.getMessage() for r in caplog.records]
    assert said == ["schedule '55 9 * * *' on nowhere could not queue its item: no such channel"] * 2, said
    line = owner.station.runners["table"].channel.line
    assert [request.text for request in line] == ["Stand-up in five minutes."]
