"""Shared fixtures: a real server on a loopback port, real WebSocket clients."""

import asyncio
import base64
import faulthandler
import functools
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import websockets
from aiohttp import web
from postgres import database_url, postgres_server, postgres_url  # noqa: F401  (fixtures; see tests/postgres.py)
from redis_server import own_redis, redis_server, redis_url  # noqa: F401  (fixtures; see tests/redis_server.py)

from broadcaster.config import config_from_dict
from broadcaster.runtime.accounts import create_channel
from broadcaster.runtime.clock import wall_clock_ms
from web.app import create_app, make_engine
from web.keys import STATION

FAST_TONES = {
    "tts": {"engine": "tone", "tone_ms_per_char": 10, "tone_delay_ms": 20},
    # The lead stays at 300 ms whatever listeners report (tests of the lead itself set min_lead_ms).
    "timeline": {"lead_ms": 300, "min_lead_ms": 300, "sentence_gap_ms": 120, "request_gap_ms": 200},
    "cleanup": {"interval_s": 3600},
    # Tests that are not about the limits must not trip them; tests of the limits set their own.
    "limits": {
        "producer_write_burst": 100_000,
        "ws_message_burst": 100_000,
        "max_connections_per_address": 0,
        "connects_per_second": 0,
    },
}


class SteppedClock:
    """A server clock (`create_app`'s `clock`) that moves only when a test steps it."""

    def __init__(self, now_ms: int | None = None) -> None:
        self.now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class LiveServer:
    base_url: str
    app: web.Application
    channel: str
    token: str
    clock: SteppedClock | None = None

    def advance(self, ms: int) -> None:
        """Step the server's clock (a server started with a SteppedClock) and let it look at once."""
        self.clock.now_ms += ms
        self.station.clock_moved()

    @property
    def station(self):
        return self.app[STATION]

    def ws_url(self, channel: str | None = None) -> str:
        return "ws" + self.base_url.removeprefix("http") + f"/ws/channels/{channel or self.channel}"

    async def say(self, text: str, token: str | None = None, channel: str | None = None) -> aiohttp.ClientResponse:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"{self.base_url}/api/channels/{channel or self.channel}/requests",
                json={"text": text},
                headers={"Authorization": f"Bearer {token or self.token}"},
            )
            await resp.read()
            return resp

    async def control(self, action: str) -> dict:
        """A producer's POST to the channel's `action` (pause, resume...), which must succeed."""
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{self.base_url}/api/channels/{self.channel}/{action}",
                headers={"Authorization": f"Bearer {self.token}"},
            ) as resp:
                assert resp.status == 200, await resp.text()
                return await resp.json()

    async def get_json(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.base_url + path) as resp:
                return resp.status, await resp.json()


def merge(base: dict, extra: dict) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in extra.items():
        if isinstance(values, list):
            out[section] = values  # [[schedule]]: a list of tables replaces
        else:
            out.setdefault(section, {}).update(values)
    return out


async def start_server(
    tmp_path: Path, overrides: dict | None = None, engine_factory=None, clock: SteppedClock | None = None
) -> tuple[web.AppRunner, LiveServer]:
    settings = merge(FAST_TONES, overrides or {})
    settings.setdefault("server", {})["data_dir"] = str(tmp_path / "data")
    config = config_from_dict(settings)
    app = create_app(config, engine_factory or make_engine, clock or wall_clock_ms)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    made = await create_channel(app[STATION].store, "table")
    return runner, LiveServer(f"http://127.0.0.1:{port}", app, made.name, made.token, clock)


@pytest.fixture
async def server(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[LiveServer]:
    marker = request.node.get_closest_marker("server_config")
    runner, live = await start_server(tmp_path, marker.args[0] if marker else None)
    yield live
    await runner.cleanup()


class Listener:
    """A real WebSocket client that records every message it receives."""

    def __init__(self, ws: websockets.ClientConnection):
        self.ws = ws
        self.messages: list[dict[str, Any]] = []

    async def next(self, kind: str, timeout: float = 10, where=None) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await self.ws.recv())
                self.messages.append(message)
                if message["type"] == kind and (where is None or where(message)):
                    return message

    async def send(self, payload: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(payload))


@pytest.fixture
async def connect(server: LiveServer):
    sockets = []

    async def open_listener(channel: str | None = None) -> Listener:
        ws = await websockets.connect(server.ws_url(channel))
        sockets.append(ws)
        return Listener(ws)

    yield open_listener
    for ws in sockets:
        await ws.close()


async def raw_websocket(url: str, receive_buffer: int = 0) -> tuple[socket.socket, bytes]:
    """A plain TCP socket that completes the WebSocket handshake; nothing in it ever answers a ping.

    `receive_buffer` > 0 shrinks the kernel's receive buffer (a reader that stalls fills it fast).
    Returns the socket and the bytes that arrived after the 101 response."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await loop.sock_connect(sock, (parts.hostname, parts.port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    received = b""
    while b"\r\n\r\n" not in received:
        data = await loop.sock_recv(sock, 65536)
        assert data, f"expected a 101 response, got EOF after {received!r}"
        received += data
    head, rest = received.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, rest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "server_config(overrides): settings merged into the test server's config")
    config.addinivalue_line("markers", "speakers(n): how many listener sinks the PulseAudio rig has (tests/browser)")
    signal.signal(signal.SIGTERM, functools.partial(_say_why_and_exit, config))
    signal.signal(signal.SIGUSR1, functools.partial(_say_where_stuck, config))


# No test takes near this long (the longest take a few minutes under load): one that does is stuck.
HANG_S = float(os.environ.get("BROADCASTER_TEST_HANG_S", 600))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """A test stuck for HANG_S (in its setup, call or teardown) says where, and is ended: a hang once
    held a whole run to CI's time limit and left nothing to read."""
    watchdog = threading.Timer(HANG_S, os.kill, (os.getpid(), signal.SIGUSR1))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()


def _say_where_stuck(config: pytest.Config, signum: int, frame) -> None:
    """Every thread's stack and every task's, on the terminal; then the test's tasks are cancelled (or,
    outside an event loop, the test is interrupted), so it fails and the run goes on."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=False)
    sys.stderr.write(f"\nA test has run for {HANG_S:g} s and is taken as stuck. Every thread:\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    for task in asyncio.all_tasks(loop) if loop else ():
        sys.stderr.write(f"task {task.get_name()}, awaiting:\n")
        traceback.print_list(traceback.StackSummary.extract(_awaited(task.get_coro())), file=sys.stderr)
    sys.stderr.flush()
    if capture is not None:
        capture.resume_global_capture()
    if loop is None:
        raise TimeoutError(f"stuck for {HANG_S:g} s (stacks above)")
    loop.call_soon_threadsafe(_cancel_all, loop)  # threadsafe: it wakes a loop waiting on nothing


def _awaited(coro):
    """The frames of a coroutine and of what it awaits, outermost first, with their current lines."""
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            yield frame, frame.f_lineno
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None) or getattr(coro, "gi_yieldfrom", None)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()


def _say_why_and_exit(config: pytest.Config, signum: int, frame) -> None:
    """A test server in this process that finds its server lease lapsed stops the process as `serve`
    would be stopped, with SIGTERM; unhandled, the whole run ended without a word."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=False)  # what follows reaches the terminal or CI's log
    sys.stderr.write(
        "\nSIGTERM: the test process was told to stop. If nothing outside sent it, a test server in this "
        "process lost its server lease (its event loop was held still for most of the lease's 10 s: a "
        "blocking call or a synchronous fixture beside a running server). Where it arrived:\n"
    )
    traceback.print_stack(frame, limit=20, file=sys.stderr)
    sys.stderr.flush()
    os._exit(128 + signum)
