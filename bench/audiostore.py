"""The cost of the audio stores: a chunk's write, a cold read, a cached read; a track's cut and a segment's read.

For each store, files (the embedded default) and the database (a cluster's, on PostgreSQL), it stores
--chunks chunks of --flac-kb of bytes, one after another as the generator does, then reads each from a
second store on the same files or database (a process that did not write them: its cache is empty), then
again (from its cache). Files' cold reads come from the page cache, as they mostly do on a server. Then it
cuts a --track-s second master into its segments (`keep_track`, where the database store does its work at
upload) and reads every segment back (`track_segment`, one per chunk of the track as it plays).

The database is a temporary PostgreSQL server (tests/postgres.py: fsync off, on this machine's loopback), or
--database-url. Times are per operation, in ms, from the caller's side (what a listener's fetch or the
generator waits for).

    .venv/bin/python bench/audiostore.py [--chunks 200] [--flac-kb 200] [--track-s 60]
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from postgres import PostgresServer, binaries
from report import percentile, table

from db.audio_store import AudioStore, open_audio_store
from db.store import Store
from tts.tracks import TRACK_RATE, segment_count

RID = "a" * 16


async def timed(work) -> float:
    started = time.perf_counter()
    await work
    return (time.perf_counter() - started) * 1000


def row(name: str, times: list[float]) -> list[object]:
    figures = (statistics.mean(times), percentile(times, 50), percentile(times, 99))
    return [name, len(times), *(f"{ms:.3f}" for ms in figures)]


async def chunks(writer: AudioStore, reader: AudioStore, count: int, size: int) -> list[list[object]]:
    ids = [f"{i:016x}" for i in range(count)]
    data = [os.urandom(size) for _ in ids]  # FLAC does not compress further; neither do random bytes
    writes = [await timed(writer.put(RID, cid, "flac", blob)) for cid, blob in zip(ids, data)]
    cold = [await timed(reader.read(RID, cid, "flac")) for cid in ids]
    cached = [await timed(reader.read(RID, cid, "flac")) for cid in ids]
    return [row("chunk write", writes), row("cold read", cold), row("cached read", cached)]


async def track(store: AudioStore, seconds: float) -> list[list[object]]:
    samples = np.random.default_rng(1).integers(-8000, 8000, size=(int(seconds * TRACK_RATE), 2), dtype=np.int16)
    master = store.decode_path("b" * 16)
    master.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(master, samples, TRACK_RATE, format="FLAC", subtype="PCM_16")
    count = segment_count(len(samples))
    kept = await timed(store.keep_track("b" * 16, count))
    reads = [await timed(store.track_segment("b" * 16, seq, count)) for seq in range(count)]
    return [row(f"keep a {seconds:g} s track", [kept]), row("segment read", reads)]


async def measure(name: str, open_store, args: argparse.Namespace) -> list[list[object]]:
    writer, reader = open_store("one"), open_store("two")
    reader.cache_bytes = 2 * args.chunks * args.flac_kb * 1024  # every chunk stays cached: the cached reads hit
    rows = await chunks(writer, reader, args.chunks, args.flac_kb * 1024)
    rows += await track(writer, args.track_s)
    return [[name, *r] for r in rows]


async def main(args: argparse.Namespace) -> None:
    server = None
    url = args.database_url
    if url is None:
        server = PostgresServer(binaries())
        server.start()
        url = server.url(await server.create_database())
    store = Store(url)
    await store.create_schema()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files = await measure("files", lambda _: open_audio_store(Path(tmp) / "files"), args)
            database = await measure(
                "database", lambda machine: open_audio_store(Path(tmp) / machine, store.engine, shared=True), args
            )
        print(table(["store", "operation", "n", "mean ms", "p50 ms", "p99 ms"], files + database))
    finally:
        await store.close()
        if server is not None:
            server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--flac-kb", type=int, default=200)
    parser.add_argument("--track-s", type=float, default=60)
    parser.add_argument("--database-url", help="a PostgreSQL database to use instead of a temporary server")
    asyncio.run(main(parser.parse_args()))
