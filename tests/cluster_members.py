"""Cluster members in this process: each a full app on its own loopback ports (public and internal),
on one PostgreSQL database and one Redis. Shared by the cluster's integration and browser tests."""

import asyncio
from pathlib import Path

import aiohttp
from aiohttp import web
from conftest import FAST_TONES, merge

from broadcaster.config import config_from_dict
from web.app import create_app
from web.keys import STATION
from web.serve import start_sites

# The default lease. All members share this process's one event loop, so a busy test machine stalls
# every member at once: with a 1 s lease an owner stepped down after ~0.7 s of a stalled loop.
LEASE_S = 3


class Member:
    def __init__(self, runner, base_url: str):
        self.runner = runner
        self.base_url = base_url

    @property
    def app(self):
        return self.runner.app

    @property
    def station(self):
        return self.app[STATION]

    def runs(self, channel: str) -> bool:
        return channel in self.station.runners

    def ws_url(self, channel: str) -> str:
        return "ws" + self.base_url.removeprefix("http") + f"/ws/channels/{channel}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_member(tmp_path: Path, database_url: str, redis_url: str, overrides: dict | None = None) -> Member:
    settings = merge(
        FAST_TONES,
        {
            "server": {"database_url": database_url, "data_dir": str(tmp_path / "data"), "port": 0},
            "cluster": {"redis_url": redis_url, "lease_s": LEASE_S},
            **(overrides or {}),
        },
    )
    config = config_from_dict(settings)
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    listening = await start_sites(runner, config)
    return Member(runner, listening.public_url)


async def owner_of(channel: str, *members: Member, timeout_s: float = 6) -> Member:
    async with asyncio.timeout(timeout_s):
        while True:
            running = [m for m in members if m.runs(channel)]
            if running:
                assert len(running) == 1, "two members run the channel at once"
                return running[0]
            await asyncio.sleep(0.05)


async def post(member: Member, channel: str, token: str, text: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        return await post_while_changing_hands(
            http,
            f"{member.base_url}/api/channels/{channel}/requests",
            {"text": text},
            {"Authorization": f"Bearer {token}"},
        )


async def post_while_changing_hands(http: aiohttp.ClientSession, url: str, body: dict | None, headers: dict) -> tuple:
    """POST, again after its Retry-After while the answer is 503, as a client of a cluster would: an
    owner whose loop stalls for two thirds of its lease steps down, and for a moment nobody runs the
    channel. Tests of a 503 itself post directly."""
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        async with http.post(url, json=body, headers=headers) as resp:
            answer = await resp.json()
            if resp.status != 503 or asyncio.get_running_loop().time() > deadline:
                return resp.status, answer
            await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
