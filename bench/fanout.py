"""Live-stream fan-out: N players of /c/<channel>/live.mp3 at once, served by one encoder.

Starts the real server as a separate process (so its CPU and memory can be read
from /proc), opens N concurrent HTTP players of the channel's live.mp3 from this
process, reads for --seconds, and prints the server's CPU (share of one core)
and resident memory beside the same server with no players (the baseline,
measured first in the same run), and how many players kept real time (received
at least 95% of the audio bytes the elapsed time calls for, never waiting more
than 2 s for data).

    .venv/bin/python bench/fanout.py [--listeners 100 1000] [--seconds 20]
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
CONFIG = '[tts]\nengine = "tone"\n[limits]\nmax_queue = 1000\nmax_connections_per_address = 0  # every player comes from 127.0.0.1\nconnects_per_second = 0\n'
STALL_S = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_cpu_seconds(pid: int) -> float:
    """The server and its ffmpeg encoders together."""
    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
    return total


async def player(http: aiohttp.ClientSession, url: str, seconds: float, bytes_per_s: float) -> bool:
    """True if this player received audio at least as fast as real time throughout."""
    received, started, longest_wait = 0, time.monotonic(), 0.0
    async with http.get(url) as resp:
        last = time.monotonic()
        while time.monotonic() - started < seconds:
            data = await resp.content.readany()
            now = time.monotonic()
            longest_wait, last = max(longest_wait, now - last), now
            if not data:
                return False
            received += len(data)
    return received >= 0.95 * bytes_per_s * seconds and longest_wait < STALL_S


async def measure(base: str, pid: int, listeners: int, seconds: float, bytes_per_s: float) -> dict:
    url = f"{base}/c/bench/live.mp3"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
        tasks = [asyncio.create_task(player(http, url, seconds, bytes_per_s)) for _ in range(listeners)]
        await asyncio.sleep(min(3.0, seconds / 4))  # let everyone connect
        cpu0, t0 = tree_cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds / 2)
        cpu = (tree_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        rss = rss_mb(pid)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    kept = sum(1 for r in results if r is True)
    return {"listeners": listeners, "cpu": cpu, "rss_mb": rss, "kept": kept}


async def baseline(pid: int, seconds: float) -> dict:
    cpu0, t0 = tree_cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return {
        "listeners": 0,
        "cpu": (tree_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0),
        "rss_mb": rss_mb(pid),
        "kept": 0,
    }


async def main(counts: list[int], seconds: float) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        config = Path(data_dir) / "bench.toml"
        config.write_text(CONFIG)
        common = ["--data-dir", data_dir, "--config", str(config)]
        made = subprocess.run(
            [sys.executable, "-m", "broadcaster", "channel", "create", "bench", "--radio", "--json", *common],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        token = json.loads(made.stdout)["producer_token"]
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "broadcaster", "serve", "--port", str(port), *common],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            await wait_up(base)
            async with aiohttp.ClientSession() as http:  # something on the air, so the stream is not all silence
                await http.post(
                    f"{base}/api/channels/bench/requests",
                    headers={"Authorization": f"Bearer {token}"},
                    json={"text": "This is the benchmark. " * 40},
                )
            await asyncio.sleep(5)  # let its synthesis finish: the baseline is an idle server
            bitrate = 128_000 / 8
            rows = [await baseline(server.pid, seconds / 2)]
            for count in counts:
                rows.append(await measure(base, server.pid, count, seconds, bitrate))
                await asyncio.sleep(2)
        finally:
            server.terminate()
            server.wait(timeout=30)
    report(rows, seconds)


async def wait_up(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(base + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the server did not start")


def report(rows: list[dict], seconds: float) -> None:
    base = rows[0]
    print(f"live.mp3 fan-out, {seconds:g} s per run, 128 kbit/s stereo; CPU is server + encoder, share of one core")
    print(f"{'players':>8} {'server CPU':>11} {'RSS MB':>8} {'RSS vs idle':>12} {'kept real time':>15}")
    for row in rows:
        extra = row["rss_mb"] - base["rss_mb"]
        kept = f"{row['kept']}/{row['listeners']}" if row["listeners"] else "-"
        print(f"{row['listeners']:>8} {row['cpu'] * 100:>10.1f}% {row['rss_mb']:>8.1f} {extra:>+11.1f} {kept:>15}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.listeners, args.seconds))
