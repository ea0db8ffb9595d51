"""The real server, in this process, on a loopback port: shared by the benchmarks."""

import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# the tests' helpers: real Chromium, PulseAudio, PostgreSQL
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

from broadcaster.config import config_from_dict
from broadcaster.runtime.accounts import create_channel
from web.app import create_app
from web.keys import STATION


@dataclass
class Running:
    app: web.Application
    base_url: str
    channel: str
    token: str

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url.removeprefix("http") + f"/ws/channels/{self.channel}"


@asynccontextmanager
async def running_server(settings: dict, channel: str = "bench"):
    with TemporaryDirectory() as data_dir:
        config = config_from_dict({**settings, "server": {"data_dir": data_dir}})
        app = create_app(config)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        token = (await create_channel(app[STATION].store, channel)).token
        try:
            yield Running(app, f"http://127.0.0.1:{port}", channel, token)
        finally:
            await runner.cleanup()
