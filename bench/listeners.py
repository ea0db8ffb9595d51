"""Listeners that behave like the listener page, for load from worker processes.

Each one keeps a socket open (permessage-deflate offered, as browsers do),
sends the page's clock samples (a burst of 8, then one every few seconds),
fetches the audio of each chunk it is told about (`audio_chunk_ready`, and
the chunks of its snapshot that are still ahead) over its own keep-alive
connections (at most 6, a browser's limit per host), sends `audio_played` when
a chunk's end passes on the server clock (which is this machine's clock), with
when its audio was in hand for chunks announced as they went on the air, and
reconnects when the server closes it. With churn it also leaves on its own
after a random time and comes back a moment later, as people do.

Only the messages it acts on are parsed as JSON; the others are counted by type.
"""

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from lightws import HandshakeError, LightSocket, open_socket


@dataclass(frozen=True)
class Behaviour:
    fetch_fraction: float = 1.0  # share of chunks whose audio is fetched
    ack: bool = True  # send audio_played when a chunk has played
    time_sync_s: float = 5.0  # 0: no clock samples at all
    mean_lifetime_s: float = 0.0  # 0: stay connected; else leave after an exponential random time
    deflate: bool = True


class Stats:
    def __init__(self) -> None:
        self.counts: Counter = Counter()  # connects, closes by code, messages by type, fetches, acks
        self.fetch_ms: list[float] = []  # from the announcement to the audio's last byte
        self.fetch_spare_ms: list[float] = []  # starts_at minus the time the audio was in hand

    def snapshot(self, reset_lists: bool) -> dict:
        out = {"counts": dict(self.counts), "fetch_ms": self.fetch_ms, "fetch_spare_ms": self.fetch_spare_ms}
        if reset_lists:
            self.fetch_ms, self.fetch_spare_ms = [], []
        return out


def _message_type(payload: bytes) -> str:
    """The "type" of a server message: the fan-out serializes it first (`{"type": "...", ...}`)."""
    if payload.startswith(b'{"type": "'):
        end = payload.find(b'"', 10)
        return payload[10:end].decode()
    try:
        return str(json.loads(payload).get("type"))
    except (ValueError, AttributeError):
        return "unparsable"


BROWSER_CONNECTIONS_PER_HOST = 6


class PageListener:
    def __init__(self, host: str, port: int, channel: str, behaviour: Behaviour, stats: Stats):
        self.host, self.port, self.channel = host, port, channel
        self.behaviour, self.stats = behaviour, stats
        self.http: aiohttp.ClientSession | None = None
        self.sock: LightSocket | None = None
        self.acks: dict[str, asyncio.TimerHandle] = {}
        self.ready_at_ms: dict[str, int] = {}  # chunks fetched, announced live, not yet acknowledged
        self.connected = asyncio.Event()  # set after the first connect attempt, whatever its outcome
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    async def run(self) -> None:
        """Connect, stay for a lifetime (or until closed), come back; until stopped."""
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit_per_host=BROWSER_CONNECTIONS_PER_HOST),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        backoff = 0.5
        while not self._stopping:
            try:
                self.sock = await open_socket(
                    self.host,
                    self.port,
                    f"/ws/channels/{self.channel}?batch=1",
                    self._on_text,
                    deflate=self.behaviour.deflate,
                )
            except (OSError, HandshakeError, TimeoutError) as exc:
                self.stats.counts[f"connect failed: {type(exc).__name__}: {exc}"[:100]] += 1
                self.connected.set()
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, 15)
                continue
            if self._stopping:  # stopped while this connect was under way
                await self.sock.close()
                return
            backoff = 0.5
            self.stats.counts["connects"] += 1
            self.connected.set()
            await self._stay(self.sock)

    async def _stay(self, sock: LightSocket) -> None:
        clock = asyncio.create_task(self._clock_samples(sock))
        lifetime = random.expovariate(1 / self.behaviour.mean_lifetime_s) if self.behaviour.mean_lifetime_s else None
        try:
            async with asyncio.timeout(lifetime):
                code = await asyncio.shield(sock.closed)
            if not self._stopping:
                self.stats.counts[f"closed by server: {code}"] += 1
                await asyncio.sleep(0.5 * random.uniform(0.8, 1.2))  # the page's first reconnect delay
        except TimeoutError:
            self.stats.counts["left (churn)"] += 1
            await sock.close()
            await asyncio.sleep(random.uniform(0.5, 2.0))
        finally:
            clock.cancel()
            for handle in self.acks.values():
                handle.cancel()
            self.acks.clear()
            self.ready_at_ms.clear()

    async def stop(self) -> None:
        self._stopping = True
        if self.sock is not None:
            await self.sock.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.close()

    async def _clock_samples(self, sock: LightSocket) -> None:
        if not self.behaviour.time_sync_s:
            return
        for _ in range(8):
            sock.send_text(json.dumps({"type": "time_sync", "t0": time.time() * 1000}))
            await asyncio.sleep(0.06)
        while True:
            await asyncio.sleep(self.behaviour.time_sync_s)
            sock.send_text(json.dumps({"type": "time_sync", "t0": time.time() * 1000}))

    def _on_text(self, payload: bytes, kernel_ns: int, read_ns: int) -> None:
        """As the page does: a step of several messages comes as one batch (`?batch=1`)."""
        kind = _message_type(payload)
        if kind == "batch":
            for message in json.loads(payload)["messages"]:
                self._on_message(message["type"], lambda message=message: message, read_ns)
        else:
            self._on_message(kind, lambda: json.loads(payload), read_ns)

    def _on_message(self, kind: str, parsed: Callable[[], dict], read_ns: int) -> None:
        """`parsed()` gives the message itself: only the few kinds acted on are worth parsing."""
        self.stats.counts[f"msg {kind}"] += 1
        if kind == "audio_chunk_ready":
            self._chunk(parsed(), read_ns, live=True)
        elif kind == "snapshot":
            now_ms = time.time() * 1000
            playing = parsed().get("now_playing") or {}
            for chunk in playing.get("chunks", []):
                if chunk["starts_at_ms"] + chunk["duration_ms"] > now_ms:
                    self._chunk(chunk, read_ns)
        elif kind in ("request_failed", "request_cancelled"):
            for chunk_id in parsed().get("discarded_chunk_ids", []):
                handle = self.acks.pop(chunk_id, None)
                self.ready_at_ms.pop(chunk_id, None)
                if handle:
                    handle.cancel()

    def _chunk(self, chunk: dict, announced_ns: int, live: bool = False) -> None:
        """`live`: announced as it went on the air (not in a snapshot): the ack says when it was in hand."""
        if self._stopping:
            return
        if random.random() < self.behaviour.fetch_fraction:
            task = asyncio.create_task(self._fetch(chunk, announced_ns, live))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.behaviour.ack and self.sock is not None:
            ends_in_s = (chunk["starts_at_ms"] + chunk["duration_ms"]) / 1000 - time.time()
            sock, chunk_id = self.sock, chunk["chunk_id"]
            self.acks[chunk_id] = asyncio.get_running_loop().call_later(max(ends_in_s, 0), self._ack, sock, chunk_id)

    def _ack(self, sock: LightSocket, chunk_id: str) -> None:
        self.acks.pop(chunk_id, None)
        ack = {"type": "audio_played", "chunk_id": chunk_id}
        ready_at_ms = self.ready_at_ms.pop(chunk_id, None)
        if ready_at_ms is not None:  # the server's clock is this host's
            ack["ready_at_ms"] = ready_at_ms
        sock.send_text(json.dumps(ack))
        self.stats.counts["acks sent"] += 1

    async def _fetch(self, chunk: dict, announced_ns: int, live: bool) -> None:
        try:
            async with self.http.get(f"http://{self.host}:{self.port}{chunk['url']}") as resp:
                body = await resp.read()
            self.stats.counts[f"fetch {resp.status}"] += 1
            self.stats.counts["fetched bytes"] += len(body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.counts[f"fetch failed: {type(exc).__name__}"] += 1
            return
        except RuntimeError:  # the session closed under it: this listener is being stopped
            return
        done_ns = time.time_ns()
        if live and chunk["chunk_id"] in self.acks:
            self.ready_at_ms[chunk["chunk_id"]] = done_ns // 1_000_000
        self.stats.fetch_ms.append((done_ns - announced_ns) / 1e6)
        self.stats.fetch_spare_ms.append(chunk["starts_at_ms"] - done_ns / 1e6)


class ListenerWorker:
    """One client process's listeners; the commands the coordinator sends through WorkerPool."""

    def __init__(self, index: int, host: str, port: int):
        self.index, self.host, self.port = index, host, port
        self.stats = Stats()
        self.listeners: list[PageListener] = []
        self.tasks: list[asyncio.Task] = []

    async def start(self, channels: list[str], behaviour: Behaviour, concurrency: int = 16) -> int:
        """Connect one listener per entry of `channels`; returns how many got a first connection."""
        gate = asyncio.Semaphore(concurrency)
        before = self.stats.counts["connects"]
        await asyncio.gather(*(self._start_one(channel, behaviour, gate) for channel in channels))
        return self.stats.counts["connects"] - before

    async def _start_one(self, channel: str, behaviour: Behaviour, gate: asyncio.Semaphore) -> None:
        listener = PageListener(self.host, self.port, channel, behaviour, self.stats)
        async with gate:
            self.listeners.append(listener)
            self.tasks.append(asyncio.create_task(listener.run()))
            await listener.connected.wait()

    async def report(self, reset_lists: bool = True) -> dict:
        open_now = sum(1 for one in self.listeners if one.sock is not None and not one.sock.closed.done())
        return {**self.stats.snapshot(reset_lists), "open": open_now}

    async def stop(self) -> dict:
        await asyncio.gather(*(one.stop() for one in self.listeners), return_exceptions=True)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.listeners, self.tasks = [], []
        return await self.report()

    async def aclose(self) -> None:
        if self.listeners:
            await self.stop()


def merge_reports(reports: list[dict]) -> dict:
    """The workers' reports as one: counts summed, lists joined."""
    counts: Counter = Counter()
    fetch_ms, spare_ms, open_now = [], [], 0
    for r in reports:
        counts.update(r["counts"])
        fetch_ms += r["fetch_ms"]
        spare_ms += r["fetch_spare_ms"]
        open_now += r["open"]
    return {"counts": counts, "fetch_ms": fetch_ms, "fetch_spare_ms": spare_ms, "open": open_now}
