"""live.mp3 beside Icecast 2.4: the same MP3 to N players from each, their CPU and memory in one run.

Starts the real server as its own process (tone engine, a radio channel whose
auto-DJ plays a folder of long generated tracks, so the stream never stops),
and Icecast 2.4 from Debian (`icecast2`) in a temporary directory on a free
loopback port. The bundled ffmpeg reads the server's live.mp3 and pushes it,
frames copied, to Icecast as the source of /live.mp3: both serve the same
audio at the same rate. Then, against each server in turn, a players process
opens N connections (every other one with `Icy-MetaData: 1`) that read and
discard whatever arrives, and over a steady window the script reads from
/proc each server's CPU time (utime + stime), RSS and write system calls, the
players' CPU, and the machine's. A player kept up if it received at least 95%
of the bytes the window's length calls for. Each repeat measures every side,
a different one first each time, and prints them with the ratio of this
server's CPU to Icecast's.

"server CPU" is the server's Python process, where the fan-out runs;
"+ encoder" adds its ffmpeg encoder (the MP3 itself, which Icecast's source
already brings). With --compare, the server of another source tree (an older
checkout, say) runs beside it and is measured the same way in every repeat,
for a before and after in one run. Everything is on 127.0.0.1; the script
stops by itself, after about a minute per side and repeat plus two or three
minutes to make the tracks and let the servers prepare them.

    apt-get install icecast2
    .venv/bin/python bench/livecast.py [--players 1000] [--seconds 40] [--repeats 3] [--compare DIR]
"""

import argparse
import asyncio
import grp
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from report import table
from serverproc import (
    ServerProcess,
    cpu_seconds,
    descendants,
    free_port,
    raise_nofile,
    status_kb,
    toml_text,
    with_uncapped_limits,
)
from workers import WorkerPool

from tts.encode import ffmpeg_exe

ROOT = Path(__file__).resolve().parent.parent
CHANNEL = "bench"
BITRATE_KBPS = 128
KEPT_UP = 0.95  # of the bytes the window calls for
TRACKS = (("Bench Quartet", "Long Tone", 220), ("Second Ensemble", "Longer Tone", 330))
TRACK_S = 1200  # long, so the auto-DJ prepares no track during the windows
ICECAST_XML = """<icecast>
  <location>loopback</location>
  <admin>bench@localhost</admin>
  <hostname>127.0.0.1</hostname>
  <limits>
    <clients>{clients}</clients>
    <sources>2</sources>
    <queue-size>524288</queue-size>
    <client-timeout>30</client-timeout>
    <header-timeout>15</header-timeout>
    <source-timeout>10</source-timeout>
    <burst-on-connect>1</burst-on-connect>
    <burst-size>65535</burst-size>
  </limits>
  <authentication>
    <source-password>{password}</source-password>
    <admin-user>admin</admin-user>
    <admin-password>{password}</admin-password>
  </authentication>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>1</fileserve>
  <paths>
    <basedir>{dir}</basedir>
    <logdir>{dir}</logdir>
    <webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot>
  </paths>
  <logging>
    <accesslog>access.log</accesslog>
    <errorlog>error.log</errorlog>
    <loglevel>2</loglevel>
  </logging>
  <security><chroot>0</chroot>{owner}</security>
</icecast>
"""


# -- the players ------------------------------------------------------------------------


class Player(asyncio.BufferedProtocol):
    """One radio player: sends its GET and counts what arrives, into a buffer shared by all of them."""

    def __init__(self, request: bytes, scratch: bytearray):
        self.request, self.scratch = request, scratch
        self.received = 0
        self.closed = False
        self.first = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.scratch

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        if not self.first.done():
            self.first.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.first.done():
            self.first.set_result(None)


class Players:
    """The worker side (bench/workers.py): N players of one URL, in one process."""

    def __init__(self, index: int):
        self.players: list[Player] = []
        self.scratch = bytearray(65536)

    async def connect(self, port: int, path: str, count: int, batch: int = 50) -> dict:
        loop = asyncio.get_running_loop()
        for start in range(0, count, batch):
            made = []
            for i in range(start, min(start + batch, count)):
                icy = "Icy-MetaData: 1\r\n" if i % 2 else ""
                request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{icy}\r\n".encode()
                made.append(loop.create_connection(lambda r=request: Player(r, self.scratch), "127.0.0.1", port))
            self.players += [protocol for _, protocol in await asyncio.gather(*made)]
        async with asyncio.timeout(30):
            await asyncio.gather(*(player.first for player in self.players))
        return {"playing": sum(not p.closed for p in self.players)}

    async def received(self) -> list[int]:
        """Bytes so far by player; -1 for one the server closed."""
        return [-1 if p.closed else p.received for p in self.players]

    async def close(self) -> None:
        for player in self.players:
            if not player.closed:
                player.transport.abort()
        self.players = []


# -- Icecast and its source -------------------------------------------------------------


@dataclass
class Icecast:
    proc: subprocess.Popen
    feeder: subprocess.Popen
    port: int
    dir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        for proc in (self.feeder, self.proc):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def log_tail(self) -> str:
        path = self.dir / "error.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-15:]) if path.exists() else "(no log)"


def icecast_binary() -> str:
    found = shutil.which("icecast2") or shutil.which("icecast")
    if found is None:
        raise SystemExit("Icecast is not installed here: apt-get install icecast2")
    return found


async def start_icecast(source_url: str, clients: int) -> Icecast:
    """Icecast on a free loopback port, with ffmpeg feeding it `source_url` as /live.mp3."""
    directory = Path(tempfile.mkdtemp(prefix="livecast-icecast-"))
    port, password = free_port(), secrets.token_hex(8)
    owner = ""
    if os.geteuid() == 0:  # Icecast will not run as root; it drops to its own user after binding
        user = pwd.getpwnam("icecast2")
        os.chown(directory, user.pw_uid, user.pw_gid)
        group = grp.getgrgid(user.pw_gid).gr_name
        owner = f"<changeowner><user>icecast2</user><group>{group}</group></changeowner>"
    config = directory / "icecast.xml"
    config.write_text(
        ICECAST_XML.format(clients=clients + 50, password=password, port=port, dir=directory, owner=owner)
    )
    proc = subprocess.Popen([icecast_binary(), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await wait_http(f"http://127.0.0.1:{port}/status-json.xsl", proc)
    with (directory / "feeder.log").open("wb") as feeder_log:
        feeder = subprocess.Popen(
            [
                ffmpeg_exe(),
                "-hide_banner",
                "-loglevel",
                "error",
                "-i",
                source_url,
                "-c:a",
                "copy",
                "-id3v2_version",
                "0",
                "-write_xing",
                "0",
                "-content_type",
                "audio/mpeg",
                "-f",
                "mp3",
                f"icecast://source:{password}@127.0.0.1:{port}/live.mp3",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=feeder_log,
        )
    icecast = Icecast(proc, feeder, port, directory)
    try:
        await wait_http(f"http://127.0.0.1:{port}/live.mp3", proc)
    except RuntimeError:
        icecast.stop()
        raise RuntimeError(f"Icecast never had a source:\n{icecast.log_tail()}") from None
    return icecast


async def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """Until `url` answers 200 (reading no body)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}")
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:g} s")


# -- the server and its radio channel ---------------------------------------------------


def make_tracks(folder: Path) -> None:
    for artist, title, freq in TRACKS:
        subprocess.run(
            [
                ffmpeg_exe(),
                "-hide_banner",
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                f"sine=frequency={freq}:duration={TRACK_S}:sample_rate=44100",
                "-ac",
                "2",
                "-b:a",
                "128k",
                "-metadata",
                f"artist={artist}",
                "-metadata",
                f"title={title}",
                str(folder / f"{freq}.mp3"),
            ],
            check=True,
            timeout=300,
        )


async def start_server(music: Path, root: Path) -> ServerProcess:
    """The server of the source tree `root`, with a radio channel on the air."""
    server = ServerProcess(
        with_uncapped_limits({"tts": {"engine": "tone"}, "music": {"folder": str(music)}}), root=root
    )
    server.config_path.write_text(toml_text(server.settings))
    subprocess.run(
        [sys.executable, "-m", "broadcaster", "channel", "create", CHANNEL, "--radio", "--json"]
        + ["--config", str(server.config_path), "--data-dir", str(server.data_dir / "data")],
        cwd=root,
        check=True,
        capture_output=True,
    )
    await server.start()
    async with aiohttp.ClientSession() as http:
        for _ in range(120):  # until the auto-DJ has a track on the air
            async with http.get(f"{server.base_url}/api/channels/{CHANNEL}/audio/queue") as resp:
                if (await resp.json()).get("now_playing"):
                    return server
            await asyncio.sleep(0.5)
    raise RuntimeError(f"the auto-DJ put nothing on the air:\n{server.log_tail()}")


async def quiet(pid: int, below: float = 0.1, timeout_s: float = 300) -> float:
    """Wait until the server and its children use less than `below` of a core over 2 s (the auto-DJ's
    first two tracks prepared), or `timeout_s` has passed; returns that share."""
    deadline = time.monotonic() + timeout_s
    while True:
        before = tree_cpu_s(pid)
        await asyncio.sleep(2)
        after = tree_cpu_s(pid)
        share = sum(after[p] - before[p] for p in after.keys() & before.keys()) / 2
        if share < below or time.monotonic() > deadline:
            return share


# -- measuring --------------------------------------------------------------------------


def machine_busy_s() -> float:
    """CPU seconds all cores spent on anything but idle and iowait, since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of the process and each of its descendants, by pid (they come and go)."""
    return {p: cpu_seconds(p) for p in (pid, *descendants(pid))}


def encoder_pid(pid: int) -> int:
    """The live stream's encoder: the server's child writing MP3 to its stdout."""
    for child in descendants(pid):
        try:
            if b"pipe:1" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            continue
    return 0


@dataclass
class Side:
    name: str
    alone: float  # the server process with no players of ours, share of one core
    cpu: float  # the server process with them
    tree_cpu: float  # with its live encoder
    rss_mb: float
    players_cpu: float
    machine_cpu: float  # all cores together
    kept: int
    playing: int
    players: int

    @property
    def fanout(self) -> float:
        """What the players add."""
        return self.cpu - self.alone


async def cpu_share(pid: int, seconds: float) -> float:
    before, started = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - started)


async def measure(name: str, pid: int, port: int, path: str, args: argparse.Namespace) -> Side:
    alone = await cpu_share(pid, args.alone)
    pool = WorkerPool(1, Players)
    try:
        playing = (await pool.call("connect", [(port, path, args.players)]))[0]["playing"]
        await asyncio.sleep(args.settle)  # the bursts are over; steady state
        client, encoder = pool.procs[0].pid, encoder_pid(pid)
        before = (cpu_seconds(pid), cpu_seconds(encoder), cpu_seconds(client), machine_busy_s(), time.monotonic())
        counts_before = (await pool.call("received"))[0]
        rss = 0.0
        for _ in range(int(args.seconds)):
            await asyncio.sleep(1)
            rss = max(rss, status_kb(pid).get("VmRSS", 0) / 1024)
        counts_after = (await pool.call("received"))[0]
        after = (cpu_seconds(pid), cpu_seconds(encoder), cpu_seconds(client), machine_busy_s(), time.monotonic())
        await pool.call("close")
    finally:
        await pool.close()
    span = after[-1] - before[-1]
    own, children, players, machine = ((a - b) / span for a, b in zip(after[:4], before[:4]))
    needed = KEPT_UP * BITRATE_KBPS * 125 * span
    kept = sum(1 for a, b in zip(counts_after, counts_before) if a >= 0 and b >= 0 and a - b >= needed)
    return Side(name, alone, own, own + children, rss, players, machine, kept, playing, args.players)


def show(sides: list[Side]) -> str:
    headers = ("side", "alone", "server CPU", "fan-out", "+ encoder", "RSS MB", "players' CPU", "machine", "kept up")
    rows = [
        (
            s.name,
            f"{s.alone:.1%}",
            f"{s.cpu:.1%}",
            f"{s.fanout:.1%}",
            f"{s.tree_cpu:.1%}",
            s.rss_mb,
            f"{s.players_cpu:.1%}",
            f"{s.machine_cpu:.1%}",
            f"{s.kept}/{s.players}" + ("" if s.playing == s.players else f" ({s.playing} connected)"),
        )
        for s in sides
    ]
    return table(headers, rows)


async def keep_playing(url: str) -> None:
    """One player for the whole run, so a server's stream runs between its windows too (as the
    feeder keeps the first server's)."""
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        while await resp.content.readany():
            pass


async def run(args: argparse.Namespace) -> None:
    raise_nofile()
    music = Path(tempfile.mkdtemp(prefix="livecast-music-"))
    servers: dict[str, ServerProcess] = {}
    icecast, keepers = None, []
    try:
        await asyncio.to_thread(make_tracks, music)
        servers["server"] = await start_server(music, ROOT)
        if args.compare:
            servers[args.compare.resolve().name] = await start_server(music, args.compare.resolve())
        icecast = await start_icecast(f"{servers['server'].base_url}/c/{CHANNEL}/live.mp3", args.players)
        for server in list(servers.values())[1:]:  # the first has the feeder
            keepers.append(asyncio.create_task(keep_playing(f"{server.base_url}/c/{CHANNEL}/live.mp3")))
        for name, server in servers.items():
            share = await quiet(server.pid)
            rss = status_kb(server.pid).get("VmRSS", 0) / 1024
            print(f"{name}, its stream playing to one player: {share:.1%} of a core with its encoder, RSS {rss:.1f} MB")
        print(
            f"{args.players} players (every other one with Icy-MetaData: 1), {BITRATE_KBPS} kbit/s, "
            f"{args.seconds:g} s windows; CPU as a share of one core (the machine has {os.cpu_count()}); "
            f"'alone': the {args.alone:g} s before the players came, with one player (Icecast: none)"
        )
        targets = [(name, s.pid, s.port, f"/c/{CHANNEL}/live.mp3") for name, s in servers.items()]
        targets.append(("Icecast", icecast.pid, icecast.port, "/live.mp3"))
        ratios: dict[str, list[str]] = {name: [] for name in servers}
        for repeat in range(args.repeats):
            measured = {}
            for name, pid, port, path in targets[repeat:] + targets[:repeat]:  # each goes first in turn
                measured[name] = await measure(name, pid, port, path, args)
                await asyncio.sleep(3)  # the last side's players gone
            print(f"\nrepeat {repeat + 1}\n{show([measured[t[0]] for t in targets])}")
            for name in servers:
                ours, theirs = measured[name], measured["Icecast"].cpu
                ratios[name].append(f"{ours.cpu / theirs:.2f}x")
                print(
                    f"{name} / Icecast: {ours.cpu / theirs:.2f}x; with the encoder {ours.tree_cpu / theirs:.2f}x; "
                    f"the players' share alone (fan-out) {ours.fanout / theirs:.2f}x"
                )
        print()
        for name, server in servers.items():
            print(f"{name} / Icecast, all repeats: {', '.join(ratios[name])}")
            print(f"{name}: {server.problems()}")
    finally:
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        if icecast is not None:
            icecast.stop()
            shutil.rmtree(icecast.dir, ignore_errors=True)
        for server in servers.values():
            server.remove(keep=args.keep)
        shutil.rmtree(music, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--players", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=40, help="length of each measured window")
    parser.add_argument("--settle", type=float, default=8, help="seconds after connecting before a window")
    parser.add_argument("--alone", type=float, default=15, help="seconds measured before connecting")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--compare",
        type=Path,
        help="also run the server of this source tree (another checkout) the same way, named by its directory",
    )
    parser.add_argument("--keep", action="store_true", help="keep the server's data dir and log")
    asyncio.run(run(parser.parse_args()))
