"""One server per database: a second `broadcaster serve` on the same database refuses to start, and says why."""

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from broadcaster.config import config_from_dict
from broadcaster.runtime.ownership import AnotherServer, ServerLease, holder_id
from db.leases import Leases
from db.store import Store
from tests.server_process import ServerProcess, cli


def write_config(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "config.toml"
    config.write_text('[tts]\nengine = "tone"\n')
    return tmp_path / "data", config


async def test_a_second_server_on_the_same_database_refuses_to_start(tmp_path):
    """The second serve exits at once with a message naming the first, and the first keeps serving."""
    data_dir, config = write_config(tmp_path)
    first = ServerProcess(data_dir, config)
    await first.start()
    try:
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "broadcaster",
                "serve",
                "--data-dir",
                str(data_dir),
                "--config",
                str(config),
                "--port",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert "already serving this database" in second.stderr, second.stderr[-2000:]
        assert f":{first.proc.pid} (host:pid)" in second.stderr
        assert "Traceback" not in second.stderr
        made = json.loads(cli("channel", "create", "beside", "--json", data_dir=data_dir, config=config).stdout)
        assert made["channel"] == "beside"  # the CLI still works beside a running server
        assert first.proc.poll() is None
    finally:
        first.proc.terminate()
        first.proc.wait(timeout=30)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
async def test_a_server_starts_again_at_once_after_the_last_one_stopped(tmp_path, how):
    """After a clean stop the lease is released; after a crash its holder is seen to be gone: no wait either way."""
    data_dir, config = write_config(tmp_path)
    server = ServerProcess(data_dir, config)
    await server.start()
    server.proc.send_signal(how)
    server.proc.wait(timeout=30)
    await server.start()  # a server that found the lease held would refuse to start (AnotherServer)
    try:
        assert server.proc.poll() is None
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)


async def test_a_held_server_lease_is_refused_and_a_lapsed_one_is_taken(tmp_path):
    """In one process: the lease held by another live holder refuses; once it lapses it is taken with a new epoch."""
    store = Store(config_from_dict({"server": {"data_dir": str(tmp_path)}}).database_url)
    await store.create_schema()
    leases = Leases(store.engine)
    try:
        other = await leases.acquire("server", "elsewhere:1:x", ttl_ms=300)
        lease = ServerLease(leases, on_lost=lambda: None)
        with pytest.raises(AnotherServer, match="elsewhere:1"):
            await lease.start()
        await asyncio.sleep(0.4)
        await lease.start()
        assert lease.lease.epoch == other.epoch + 1
        await lease.stop()
    finally:
        await store.close()


def test_holder_ids_differ_within_one_process():
    """Two servers in one process (tests) are told apart by the random part."""
    assert holder_id() != holder_id()


async def test_db_upgrade_refuses_while_a_server_runs(tmp_path):
    """Migrating beneath a running server is refused, naming it; once it stops, the upgrade runs."""
    data_dir, config = write_config(tmp_path)
    server = ServerProcess(data_dir, config)
    await server.start()
    try:
        refused = subprocess.run(
            [
                sys.executable,
                "-m",
                "broadcaster",
                "db",
                "upgrade",
                "--data-dir",
                str(data_dir),
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode != 0 and "is serving this database" in refused.stderr, refused.stderr[-1000:]
        assert f":{server.proc.pid}, host:pid" in refused.stderr
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)
    cli("db", "upgrade", data_dir=data_dir, config=config)
