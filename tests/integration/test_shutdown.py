"""A stop is prompt even with a live.mp3 player connected: the stream never ends by itself, so the
server ends it when it begins to stop, as it closes WebSockets, instead of waiting out a timeout."""

import asyncio
import signal

import aiohttp
from server_process import ServerProcess, cli

CONFIG = """
[tts]
engine = "tone"
"""


async def test_sigterm_with_a_live_player_connected_stops_within_seconds(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    data = tmp_path / "data"
    cli("channel", "create", "lobby", data_dir=data, config=config)
    server = ServerProcess(data, config)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.base_url + "/c/lobby/live.mp3") as player:
                assert len(await player.content.read(4096)) > 0
                server.proc.send_signal(signal.SIGTERM)
                # aiohttp alone would wait a minute for the endless response to finish
                async with asyncio.timeout(20):
                    while server.proc.poll() is None:
                        await asyncio.sleep(0.05)
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.log_tail()
