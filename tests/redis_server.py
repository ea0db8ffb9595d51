"""A real redis-server (the distribution's package) on a free loopback port, in a directory of its own.

It keeps no data on disk unless a test stops it with `keep_data=True` (SHUTDOWN SAVE), which a
start on the same port and directory then loads: a Redis that restarts with its data. Stopped
otherwise, it comes back empty.

Without redis-server on the machine the tests that need it skip, so `scripts/test` passes on a
bare Python install; CI installs it and sets BROADCASTER_REQUIRE_BROWSER=1 (the switch for every
outside program the suite needs), which turns that skip into a failure.
"""

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

START_TIMEOUT_S = 10


def redis_binary() -> str | None:
    return os.environ.get("BROADCASTER_REDIS_SERVER") or shutil.which("redis-server")


def require_redis() -> str:
    """The redis-server binary, or a skip (a failure where the suite must run everything)."""
    binary = redis_binary()
    if binary is None:
        if os.environ.get("BROADCASTER_REQUIRE_BROWSER") == "1":
            pytest.fail("redis-server is required here (BROADCASTER_REQUIRE_BROWSER=1) but was not found")
        pytest.skip("no redis-server on this machine (apt-get install redis-server, or set BROADCASTER_REDIS_SERVER)")
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, binary: str, directory: Path):
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        # No retries: SHUTDOWN ends with the connection closing, which is success, not a reason to retry.
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # An explicit empty `save` and no AOF: nothing is written unless stop() is told to keep the data.
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--save", "", "--appendonly", "no", "--dbfilename", "dump.rdb", "--logfile", "redis.log"]
        self.process = subprocess.Popen([self.binary, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.ConnectionError as exc:  # still starting, or loading its data (BusyLoadingError)
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(
                        f"expected redis-server on port {self.port}, got {exc}; its log:\n{log}"
                    ) from exc
                time.sleep(0.02)

    def stop(self, keep_data: bool = False) -> None:
        """Shut it down: with keep_data its data is saved for the next start, otherwise dropped."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                with self.client() as client:
                    client.shutdown(save=keep_data, nosave=not keep_data)
            except redis.RedisError:
                process.kill()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if not keep_data:
            (self.directory / "dump.rdb").unlink(missing_ok=True)

    def restart(self, keep_data: bool = False) -> None:
        self.stop(keep_data)
        self.start()

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the whole session; a test that restarts Redis takes `own_redis`."""
    server = RedisServer(require_redis(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop and start."""
    server = RedisServer(require_redis(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()
