"""The real server in its own process, with a temporary data dir, and its memory read from /proc.

Load generators must not share the server's event loop, so these benchmarks
start `python -m broadcaster serve` as a child, create channels with the
`channel create --json` command, and read the server's VmRSS and VmHWM (and
those of its ffmpeg children) from /proc/<pid>/status.
"""

import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent

# The server's own defaults would cap what a benchmark measures: one address opens every socket here.
UNCAPPED_LIMITS = {
    "max_connections_per_address": 0,
    "connects_per_second": 0,
    "ws_messages_per_second": 10_000,
    "ws_message_burst": 10_000,
    "producer_writes_per_minute": 1_000_000,
    "producer_write_burst": 10_000,
    "max_queue": 1000,
}


def raise_nofile() -> int:
    """Lift this process's open-file limit to the hard limit (each socket is a file); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_text(settings: dict[str, dict[str, Any]]) -> str:
    """Sections of scalars, which is all a benchmark config needs."""
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars are valid TOML scalars
    return "\n".join(lines) + "\n"


def with_uncapped_limits(settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**settings, "limits": {**UNCAPPED_LIMITS, **settings.get("limits", {})}}


# -- /proc ---------------------------------------------------------------------------


def status_kb(pid: int) -> dict[str, int]:
    """The Vm* and Threads lines of /proc/<pid>/status, in kB (Threads as a count)."""
    values = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return values
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key.startswith("Vm") or key == "Threads":
            values[key] = int(rest.split()[0])
    return values


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the chunk encoders, the live stream's encoder, progressive streams)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def tcp_counters() -> dict[str, int]:
    """This network namespace's TcpExt counters: ListenOverflows counts connections refused because a
    listening socket's accept queue was full (each costs the client a SYN retransmit, 1 s or more)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    counters = {}
    for names, values in zip(lines[::2], lines[1::2]):
        if names[0] == "TcpExt:":
            counters.update(zip(names[1:], map(int, values[1:])))
    return counters


def tcp_summary(before: dict[str, int]) -> str:
    """What happened to TCP on this host since `before` (shared with anything else running here)."""
    after = tcp_counters()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("ListenOverflows", "TCPSynRetrans")}
    return (
        f"TCP on this host meanwhile: {delta['ListenOverflows']} connections overflowed a listen queue, "
        f"{delta['TCPSynRetrans']} SYN retransmits"
    )


@dataclass
class MemorySample:
    at_s: float  # since the sampler started
    rss_mb: float  # the server process
    hwm_mb: float  # its peak RSS so far
    children_rss_mb: float  # its descendants together (shared pages counted in each)
    children: int
    child_names: str  # e.g. "ffmpeg x2"
    threads: int
    fds: int

    @property
    def total_mb(self) -> float:
        return self.rss_mb + self.children_rss_mb


def sample_memory(pid: int, started: float) -> MemorySample:
    own = status_kb(pid)
    kids = descendants(pid)
    kids_kb = sum(status_kb(kid).get("VmRSS", 0) for kid in kids)
    names = Counter(_command_name(kid) for kid in kids)
    return MemorySample(
        time.monotonic() - started,
        own.get("VmRSS", 0) / 1024,
        own.get("VmHWM", 0) / 1024,
        kids_kb / 1024,
        len(kids),
        ", ".join(f"{n} x{c}" for n, c in names.items()),
        own.get("Threads", 0),
        open_fds(pid),
    )


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


class MemorySampler:
    """Samples the server's memory every `interval_s` in a task; `samples` keeps them all."""

    def __init__(self, pid: int, interval_s: float):
        self.pid, self.interval_s = pid, interval_s
        self.started = time.monotonic()
        self.samples: list[MemorySample] = []
        self._task: asyncio.Task | None = None

    def sample(self) -> MemorySample:
        found = sample_memory(self.pid, self.started)
        self.samples.append(found)
        return found

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self.interval_s)


# -- the server --------------------------------------------------------------------


@dataclass
class ServerProcess:
    settings: dict[str, dict[str, Any]]
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="broadcaster-bench-")))
    port: int = field(default_factory=free_port)
    profile_path: Path | None = None  # run the server under cProfile, writing its stats here on exit
    root: Path = ROOT  # the source tree it runs from: another checkout, to compare two versions in one run
    extra_args: list[str] = field(default_factory=list)  # more `serve` options, e.g. ["--workers", "2"]
    proc: subprocess.Popen | None = None

    @property
    def config_path(self) -> Path:
        return self.data_dir / "bench.toml"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server is not running"
        return self.proc.pid

    def _common(self) -> list[str]:
        return ["--config", str(self.config_path), "--data-dir", str(self.data_dir / "data")]

    async def create_channels(self, names: list[str], parallel: int = 4) -> dict[str, str]:
        """Producer tokens by channel name, from `broadcaster channel create NAME --json`."""
        self.config_path.write_text(toml_text(self.settings))
        gate = asyncio.Semaphore(parallel)

        async def create(name: str) -> tuple[str, str]:
            async with gate:
                made = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "broadcaster",
                    "channel",
                    "create",
                    name,
                    "--json",
                    *self._common(),
                    cwd=self.root,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                out, err = await made.communicate()
            if made.returncode != 0:
                raise RuntimeError(f"channel create {name} exited {made.returncode}: {err.decode()[-800:]}")
            return name, json.loads(out)["producer_token"]

        # The first alone: two commands creating the schema of a fresh database at once collide
        # ("table channels already exists").
        first = dict([await create(names[0])])
        return first | dict(await asyncio.gather(*(create(name) for name in names[1:])))

    async def start(self, timeout_s: float = 120) -> None:
        self.config_path.write_text(toml_text(self.settings))
        log = self.log_path.open("ab")
        profiler = ["-m", "cProfile", "-o", str(self.profile_path)] if self.profile_path else []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *profiler,
                "-m",
                "broadcaster",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *self._common(),
                *self.extra_args,
            ],
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # As scripts/serve runs it (an explicit PYTHONMALLOC wins); the figures in docs/performance.md are of it.
            env={**os.environ, "PYTHONMALLOC": os.environ.get("PYTHONMALLOC", "malloc")},
        )
        log.close()
        await self._wait_healthy(timeout_s)

    async def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    async with http.get(self.base_url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the server did not answer /healthz within {timeout_s:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def problems(self) -> str:
        """The server log's warnings and errors, counted by message, with the last traceback's end."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        counts: Counter = Counter()
        traceback: list[str] = []
        for i, line in enumerate(lines):
            if " WARNING " in line or " ERROR " in line:
                counts[re.sub(r"[0-9a-f]{16}", "<id>", line.split(" ", 2)[2].split(" [")[0])[:160]] += 1
                if i + 1 < len(lines) and lines[i + 1].startswith("Traceback"):
                    end = next((j for j in range(i + 2, len(lines)) if lines[j][:4].isdigit()), len(lines))
                    traceback = lines[i + 1 : end]
        if not counts:
            return "server log: no warnings or errors"
        out = [f"server log: {sum(counts.values())} warnings/errors"]
        out += [f"  {n:5d} x {message}" for message, n in counts.most_common(8)]
        if traceback:
            out += ["  the last traceback ends:", *(f"    {line}" for line in traceback[-8:])]
        return "\n".join(out)

    def data_bytes(self) -> int:
        total = 0
        for path in (self.data_dir / "data").rglob("*"):
            try:
                total += path.stat().st_size if path.is_file() else 0
            except OSError:
                continue
        return total

    def stop(self, timeout_s: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def remove(self, keep: bool = False) -> None:
        self.stop()
        if keep:
            print(f"(server data and log kept in {self.data_dir})")
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def profile_summary(path: Path, lines: int = 15) -> str:
    """Where the server's own time went, from a cProfile file written at its exit: by package, then
    the top functions. (Cumulative times mean little for coroutines; own time is what adds up.)"""
    import pstats

    if not path.is_file():
        return f"(no profile at {path}: did the server exit cleanly?)"
    stats = pstats.Stats(str(path)).stats
    by_group: Counter = Counter()
    for (filename, _, name), (_, _, own, _, _) in stats.items():
        by_group[_profile_group(filename, name)] += own
    total = sum(by_group.values()) or 1
    out = [f"own time {total:.1f} s; by package:"]
    out += [f"  {own / total:6.1%}  {own:7.1f} s  {group}" for group, own in by_group.most_common(lines)]
    top = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:lines]
    out += ["top functions by own time:"]
    out += [
        f"  {own / total:6.1%}  {calls:9d} calls  {_short(filename)}:{line}({name})"
        for (filename, line, name), (_, calls, own, _, _) in top
    ]
    return "\n".join(out)


def _profile_group(filename: str, name: str) -> str:
    if filename == "~":  # a builtin: name it by what it is a method of
        return name.split(" of ")[-1].rstrip("}>") if " of " in name else name
    if "site-packages/" in filename:
        return filename.split("site-packages/")[1].split("/")[0]
    if filename.startswith(str(ROOT)):
        return filename[len(str(ROOT)) + 1 :].split("/")[0] + "/ (project)"
    return "stdlib " + Path(filename).stem


def _short(filename: str) -> str:
    return filename.split("site-packages/")[-1].replace(str(ROOT) + "/", "")


async def listener_count(http: aiohttp.ClientSession, base_url: str, channel: str) -> int:
    async with http.get(f"{base_url}/api/channels/{channel}/audio/queue") as resp:
        return (await resp.json())["listeners"]


async def scrape_gauges(http: aiohttp.ClientSession, base_url: str, names: list[str]) -> dict[str, float]:
    """Unlabelled gauges from the server's /metrics (NaN for any it does not report)."""
    async with http.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    found = {name: float("nan") for name in names}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in found:
            found[name] = float(value)
    return found


@dataclass
class Histogram:
    """An unlabelled histogram from /metrics: cumulative counts by upper bound, and the sum."""

    buckets: list[tuple[float, float]]
    total: float

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0

    def minus(self, earlier: "Histogram") -> "Histogram":
        return Histogram(
            [(le, n - m) for (le, n), (_, m) in zip(self.buckets, earlier.buckets)], self.total - earlier.total
        )

    def bound(self, share: float) -> float:
        """The smallest bucket bound that `share` of the observations fall within."""
        return next((le for le, n in self.buckets if n >= share * self.count), float("inf"))


async def scrape_histogram(http: aiohttp.ClientSession, base_url: str, name: str, labels: str = "") -> Histogram:
    """`labels`: the series' labels as /metrics writes them, e.g. 'generation="2"' (none: unlabelled)."""
    async with http.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    bucket = f'{name}_bucket{{{labels + "," if labels else ""}le="'
    total_line = f"{name}_sum{{{labels}}} " if labels else f"{name}_sum "
    buckets, total = [], 0.0
    for line in text.splitlines():
        if line.startswith(bucket):
            le, count = line[len(bucket) :].split('"} ')
            buckets.append((float(le), float(count)))
        elif line.startswith(total_line):
            total = float(line.split()[-1])
    return Histogram(buckets, total)


async def wait_listeners(
    http: aiohttp.ClientSession, base_url: str, channel: str, expected: int, timeout_s: float = 120
) -> int:
    """Poll the queue endpoint until the server counts `expected` listeners (or give up); returns the count."""
    deadline, count = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline:
        count = await listener_count(http, base_url, channel)
        if count == expected:
            return count
        await asyncio.sleep(0.25)
    return count


async def narrate(
    server: ServerProcess, http: aiohttp.ClientSession, token: str, channel: str, text: str, timeout_s: float = 300
) -> dict:
    """Submit `text` and follow it on a socket of our own until it has played; returns what happened:
    chunks, timeline shifts, the outcome, and `lead_ms`, from the first chunk's announcement reaching
    us to its start (the server's clock is this host's)."""
    seen = {"chunks": 0, "shifts": 0, "outcome": "timed out", "lead_ms": None}
    async with http.ws_connect(f"{server.base_url.replace('http', 'ws')}/ws/channels/{channel}") as ws:
        async with http.post(
            f"{server.base_url}/api/channels/{channel}/requests",
            json={"text": text},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            request_id = (await resp.json())["request_id"]
        deadline = time.monotonic() + timeout_s
        async for msg in ws:
            event = json.loads(msg.data)
            if event.get("request_id") != request_id:
                continue
            if event["type"] == "audio_chunk_ready" and seen["lead_ms"] is None:
                seen["lead_ms"] = event["starts_at_ms"] - time.time() * 1000
            seen["chunks"] += event["type"] == "audio_chunk_ready"
            seen["shifts"] += event["type"] == "timeline_shifted"
            if event["type"] in ("request_played", "request_failed", "request_cancelled"):
                seen["outcome"] = event["type"]
                break
            if time.monotonic() > deadline:
                break
    return seen
