"""The real `broadcaster` as a child process, for tests that must kill, restart or drive it from the CLI."""

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

START_TIMEOUT_S = 30


def free_port() -> int:
    """A loopback port free right now, so parallel or repeated runs never collide on a fixed one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, data_dir: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m broadcaster ARGS` on the given data dir and config, as an operator would; fails on error."""
    return subprocess.run(
        [sys.executable, "-m", "broadcaster", *args, "--data-dir", str(data_dir), "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


class ServerProcess:
    """`broadcaster serve` on a free port; each start logs to `server-<n>.log` in `logs`
    (default: the data dir's parent), so a failure can show what the server said."""

    def __init__(self, data_dir: Path, config: Path, logs: Path | None = None):
        self.logs = logs or data_dir.parent
        self.port = free_port()
        self.args = [
            sys.executable,
            "-m",
            "broadcaster",
            "serve",
            "--data-dir",
            str(data_dir),
            "--config",
            str(config),
            "--port",
            str(self.port),
        ]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    async def start(self) -> None:
        """Launch the server and return once /healthz answers 200."""
        self.starts += 1
        with open(self.logs / f"server-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"the server exited at start {self.starts}:\n{self.log_tail()}"
                try:
                    async with http.get(self.base_url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"the server did not come up at start {self.starts}:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush or clean up."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Shut down gracefully if still running, killing it if it will not exit."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self) -> str:
        """The end of the current start's log."""
        return (self.logs / f"server-{self.starts}.log").read_text(errors="replace")[-3000:]


async def metric(server, name: str, labels: str = "") -> float:
    """One sample from a server's /metrics (anything with a `base_url`); `labels` as written there,
    e.g. 'generation="2"'."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    wanted = f"{name}{{{labels}}} " if labels else f"{name} "
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(wanted)))
