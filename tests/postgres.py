"""A real PostgreSQL server for the tests: Debian's binaries, a temporary data directory, a free loopback port.

One server serves the whole test session; each test that asks gets a database of its own (CREATE DATABASE),
dropped when it ends. initdb refuses to run as root, so under root the server runs as the `postgres` user.
`stop()` and `start()` take the server away and bring it back on the same port and data (an outage); they block
for about 0.1 s each (`asyncio.to_thread` keeps a test's loop free meanwhile).

Locally, a machine without PostgreSQL skips these tests; in CI (`.ci/run` sets BROADCASTER_REQUIRE_BROWSER=1 and
installs Debian's `postgresql`) a missing server is a failure.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

# Durability is not under test: without fsync a CREATE DATABASE and each commit cost far less.
SPEED = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def binaries() -> Path | None:
    """The newest installed server's bin directory (Debian keeps them off PATH), else PATH's, else None."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if debian:
        return Path(debian[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temp directory, run by `pg_ctl` as an unprivileged user."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="broadcaster-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = free_port()
        self.user = "postgres"  # the database superuser's name, whichever system user runs the server
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._made = 0
        if self._as:
            account = pwd.getpwnam("postgres")
            os.chown(self.base, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "--no-sync", "-E", "UTF8")
        self.running = False

    def _run(self, program: str, *args: str) -> None:
        command = [*self._as, str(self.bin_dir / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr or done.stdout}\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> None:
        """Start (or start again) on the same port and data; returns once it accepts connections."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c max_connections=200 {SPEED}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop: `fast` disconnects clients and shuts down cleanly; `immediate` is a crash (recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def close(self) -> None:
        if self.running:
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{database}"

    async def create_database(self) -> str:
        """A new empty database; returns its name."""
        self._made += 1
        name = f"test_{self._made}"
        await self._admin(f'CREATE DATABASE "{name}"')
        return name

    async def drop_database(self, name: str) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def _admin(self, statement: str) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user=self.user, database="postgres")
        try:
            await conn.execute(statement)
        finally:
            await conn.close()


def require(what: str) -> None:
    """Skip without `what`, or fail where it must be there (CI)."""
    if os.environ.get("BROADCASTER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what} is required here (BROADCASTER_REQUIRE_BROWSER=1) but was not found")
    pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server, started on first use and removed, data and all, at the end."""
    bin_dir = binaries()
    if bin_dir is None:
        require("PostgreSQL (Debian's postgresql package)")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
async def postgres_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """The URL of a fresh database on the session's server, dropped after the test."""
    if not postgres_server.running:  # an earlier test stopped it and failed before starting it again
        postgres_server.start()
    name = await postgres_server.create_database()
    yield postgres_server.url(name)
    if not postgres_server.running:
        postgres_server.start()
    await postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database's URL: a SQLite file in the test's directory, or a database on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'broadcaster.db'}"
    return request.getfixturevalue("postgres_url")
