"""SIGKILL the real server at random moments, over and over: nothing accepted is lost, nothing half-written is served.

One server process on one data directory is killed a dozen times (seeded random moments: while
narrations are being synthesized, while a submission is in flight, while audio is on the air) and
restarted each time. After every kill the database and the audio files are inspected at rest, as the
crash left them; after every restart each stored chunk is fetched back. At the end the queue drains.
"""

import asyncio
import hashlib
import io
import json
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import soundfile
from server_process import ServerProcess, cli

from broadcaster.core.states import CHUNK_TRANSITIONS, REQUEST_TRANSITIONS, ChunkState, RequestState

SEED = 20_241_121
KILLS = 12
SENTENCE_GAP_MS, REQUEST_GAP_MS = 100, 200
CONFIG = f"""
[tts]
engine = "tone"
tone_ms_per_char = 4
tone_delay_ms = 120

[timeline]
lead_ms = 300
sentence_gap_ms = {SENTENCE_GAP_MS}
request_gap_ms = {REQUEST_GAP_MS}

[limits]
max_connections_per_address = 0
connects_per_second = 0
producer_writes_per_minute = 1000000
producer_write_burst = 1000000

[cleanup]
interval_s = 3600
"""
FINAL = {RequestState.PLAYED, RequestState.FAILED, RequestState.CANCELLED}


def reachable(table: dict, state: str) -> set[str]:
    """Every state a transition table allows from `state`, `state` included."""
    seen, todo = {state}, [state]
    while todo:
        current = todo.pop()
        for (source, _), target in table.items():
            if source == current and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


@dataclass
class Rows:
    requests: dict[str, dict]
    chunks: dict[str, dict]  # chunk id -> row, plus "line_seq" of its request


def read_rows(db: Path) -> Rows:
    """The database as it is on disk (read-only; after a kill, as the crash left it)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        requests = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM playback_requests")}
        chunks = {
            r["id"]: dict(r)
            for r in conn.execute(
                "SELECT c.*, r.line_seq FROM audio_chunks c JOIN playback_requests r ON r.id = c.request_id"
            )
        }
    finally:
        conn.close()
    return Rows(requests, chunks)


@dataclass
class History:
    """What has been seen across kills, to check that nothing goes backwards."""

    accepted: list[str] = field(default_factory=list)
    request_states: dict[str, str] = field(default_factory=dict)
    chunk_states: dict[str, str] = field(default_factory=dict)
    chunk_starts: dict[str, int] = field(default_factory=dict)
    flac_digests: dict[str, str] = field(default_factory=dict)
    served: set[str] = field(default_factory=set)  # chunk ids already fetched back and compared

    def check(self, rows: Rows) -> None:
        missing = [rid for rid in self.accepted if rid not in rows.requests]
        assert not missing, f"accepted requests lost: {missing}"
        for rid, row in rows.requests.items():
            before = self.request_states.get(rid, RequestState.PENDING)
            assert row["state"] in reachable(REQUEST_TRANSITIONS, before), f"request {rid}: {before} -> {row['state']}"
            self.request_states[rid] = row["state"]
        assert set(self.chunk_states) <= set(rows.chunks), "a chunk row disappeared"
        for cid, row in rows.chunks.items():
            before = self.chunk_states.get(cid, ChunkState.READY)
            assert row["state"] in reachable(CHUNK_TRANSITIONS, before), f"chunk {cid}: {before} -> {row['state']}"
            self.chunk_states[cid] = row["state"]
            if row["starts_at_ms"] is not None:
                assert self.chunk_starts.setdefault(cid, row["starts_at_ms"]) == row["starts_at_ms"], (
                    f"chunk {cid} moved"
                )


def check_requests(rows: Rows) -> None:
    """Each request's chunks are whole, numbered 0..k-1, and agree with the request's state."""
    by_request: dict[str, list[dict]] = {rid: [] for rid in rows.requests}
    for row in rows.chunks.values():
        by_request[row["request_id"]].append(row)
    for rid, request in rows.requests.items():
        chunks = sorted(by_request[rid], key=lambda c: c["seq"])
        sentences = len(json.loads(request["sentences_json"]))
        states = {c["state"] for c in chunks}
        assert [c["seq"] for c in chunks] == list(range(len(chunks))) and len(chunks) <= sentences
        assert (request["finished_at_ms"] is not None) == (request["state"] in FINAL), request
        placed = [c["starts_at_ms"] is not None for c in chunks]
        assert placed == sorted(placed, reverse=True), f"request {rid}: chunks placed out of order"
        match request["state"]:
            case RequestState.PENDING:
                assert not chunks
            case RequestState.GENERATING:
                assert states <= {ChunkState.READY, ChunkState.PLAYED}
            case RequestState.PLAYED:
                assert len(chunks) == sentences and states == {ChunkState.PLAYED}
                assert request["finished_at_ms"] == max(c["starts_at_ms"] + c["duration_ms"] for c in chunks)
            case _:
                assert ChunkState.READY not in states


def fully_made(rows: Rows) -> set[str]:
    """Ids of the requests that have a chunk for every sentence."""
    counts: dict[str, int] = {}
    for row in rows.chunks.values():
        counts[row["request_id"]] = counts.get(row["request_id"], 0) + 1
    return {rid for rid, r in rows.requests.items() if counts.get(rid, 0) == len(json.loads(r["sentences_json"]))}


def check_timeline(rows: Rows) -> None:
    """Audio on the timeline never overlaps, keeps its gaps, and runs in line order."""
    placed = sorted(
        (c for c in rows.chunks.values() if c["starts_at_ms"] is not None and c["state"] != ChunkState.DISCARDED),
        key=lambda c: c["starts_at_ms"],
    )
    for before, after in zip(placed, placed[1:]):
        gap = SENTENCE_GAP_MS if before["request_id"] == after["request_id"] else REQUEST_GAP_MS
        assert after["starts_at_ms"] >= before["starts_at_ms"] + before["duration_ms"] + gap, (before, after)
        assert (before["line_seq"], before["seq"]) < (after["line_seq"], after["seq"]), (before, after)


def check_files(rows: Rows, audio: Path, history: History) -> list[str]:
    """Every stored chunk has a whole FLAC with its recorded samples; returns the ids of stray .flac.part files."""
    for cid, row in rows.chunks.items():
        data = (audio / row["request_id"] / f"{cid}.flac").read_bytes()
        samples, rate = soundfile.read(io.BytesIO(data), dtype="int16", always_2d=True)
        assert (len(samples), samples.shape[1], rate) == (row["samples"], row["channels"], row["sample_rate"]), cid
        assert abs(row["duration_ms"] - row["samples"] * 1000 / row["sample_rate"]) <= 1
        digest = hashlib.sha256(data).hexdigest()
        assert history.flac_digests.setdefault(cid, digest) == digest, f"the FLAC of chunk {cid} changed"
    strays = [p.name.split(".")[0] for p in audio.glob("*/*.flac.part")]
    assert not set(strays) & set(rows.chunks), "a stored chunk has its FLAC still under the temporary name"
    return strays


async def check_served(server: ServerProcess, rows: Rows, audio: Path, history: History, strays: list[str]) -> None:
    """The running server returns each stored chunk's exact FLAC, a whole MP3 where the crash lost it,
    and nothing for the ids of half-written files."""
    async with aiohttp.ClientSession() as http:
        for cid, row in rows.chunks.items():
            if cid in history.served:
                continue
            async with http.get(f"{server.base_url}/api/audio/chunks/{cid}?format=flac") as resp:
                assert resp.status == 200
                assert await resp.read() == (audio / row["request_id"] / f"{cid}.flac").read_bytes()
            if not (audio / row["request_id"] / f"{cid}.mp3").exists():  # the crash came before the MP3 was done
                async with http.get(f"{server.base_url}/api/audio/chunks/{cid}") as resp:
                    assert resp.status == 200
                    decoded, rate = soundfile.read(io.BytesIO(await resp.read()), dtype="int16")
                    assert rate == row["sample_rate"] and abs(len(decoded) - row["samples"]) <= rate // 100
            history.served.add(cid)
        for cid in strays:
            for fmt in ("flac", "mp3"):
                async with http.get(f"{server.base_url}/api/audio/chunks/{cid}?format={fmt}") as resp:
                    assert resp.status == 404, f"half-written chunk {cid} was served as {fmt}"


def narration(rng: random.Random, number: int) -> str:
    return " ".join(
        f"Request {number} says sentence {i} of its {rng.choice(['tale', 'story', 'saga'])}."
        for i in range(rng.randint(2, 4))
    )


async def submit(http: aiohttp.ClientSession, server: ServerProcess, token: str, text: str) -> str:
    async with http.post(
        f"{server.base_url}/api/channels/table/requests",
        json={"text": text},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 202, await resp.text()
        return (await resp.json())["request_id"]


async def queue(server: ServerProcess) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/api/channels/table/audio/queue") as resp:
            return await resp.json()


async def kill_at_a_random_moment(
    rng: random.Random, server: ServerProcess, token: str, history: History, number: int
) -> str:
    """Submit narrations, then SIGKILL while they are generated, while a submission is in flight, or on the air."""
    async with aiohttp.ClientSession() as http:
        for _ in range(rng.choice([1, 1, 2])):
            history.accepted.append(await submit(http, server, token, narration(rng, len(history.accepted))))
        moment = ("generating", "submitting", "on the air")[number % 3]
        if moment == "on the air":
            async with asyncio.timeout(30):
                while not ((await queue(server))["now_playing"] or {}).get("chunks"):
                    await asyncio.sleep(0.02)
        if moment == "submitting":
            in_flight = asyncio.create_task(submit(http, server, token, narration(rng, len(history.accepted))))
            await asyncio.sleep(rng.uniform(0, 0.03))
        else:
            await asyncio.sleep(rng.uniform(0, 0.6))
        server.kill()
        if moment == "submitting":
            try:
                history.accepted.append(await in_flight)  # it got its 202 before the kill
            except aiohttp.ClientError:
                pass  # cut off: not accepted, so nothing is promised about it
    return moment


async def test_random_kills_lose_nothing_accepted_and_serve_nothing_half_written(tmp_path):
    """Twelve SIGKILLs at seeded random moments: accepted requests survive with legal states, stored chunks
    are whole and served byte for byte, the timeline never overlaps, and the queue finally drains to played."""
    data_dir, config, logs = tmp_path / "data", tmp_path / "config.toml", tmp_path / "logs"
    config.write_text(CONFIG)
    logs.mkdir()
    made = cli("channel", "create", "table", "--json", data_dir=data_dir, config=config)
    token = json.loads(made.stdout)["producer_token"]
    db, audio = data_dir / "broadcaster.db", data_dir / "audio"
    rng, history, moments = random.Random(SEED), History(), []
    rows, strays, mid_generation = None, [], 0
    server = ServerProcess(data_dir, config, logs)
    try:
        for number in range(KILLS):
            await server.start()
            if rows is not None:
                await check_served(server, rows, audio, history, strays)  # what the last crash left behind
            moments.append(await kill_at_a_random_moment(rng, server, token, history, number))
            rows = read_rows(db)
            history.check(rows)
            check_requests(rows)
            check_timeline(rows)
            strays = check_files(rows, audio, history)
            mid_generation += any(
                r["state"] == RequestState.GENERATING and r["id"] not in fully_made(rows)
                for r in rows.requests.values()
            )

        await server.start()
        await check_served(server, rows, audio, history, strays)
        async with asyncio.timeout(120):  # drained: the line is empty and its last save has landed
            while (
                (state := await queue(server))["now_playing"]
                or state["queue"]
                or not all(row["state"] in FINAL for row in read_rows(db).requests.values())
            ):
                await asyncio.sleep(0.2)
        rows = read_rows(db)
        history.check(rows)
        check_requests(rows)
        check_timeline(rows)
        check_files(rows, audio, history)
        await check_served(server, rows, audio, history, [])
        unplayed = {rid: rows.requests[rid] for rid in history.accepted if rows.requests[rid]["state"] != "played"}
        assert not unplayed, f"accepted requests that did not play: {unplayed}"
        assert {row["state"] for row in rows.requests.values()} <= FINAL
    except BaseException:
        print(server.log_tail())
        raise
    finally:
        server.stop()
    print(
        f"\n{KILLS} kills ({', '.join(moments)}), {mid_generation} of them with a request half generated; "
        f"{len(history.accepted)} accepted requests of {len(rows.requests)} stored, {len(rows.chunks)} chunks"
    )
