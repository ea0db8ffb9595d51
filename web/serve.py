"""Running the app on its sockets: the public one, and in a cluster the internal one its peers use."""

import asyncio
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass

from aiohttp import web

from broadcaster.config import Config

from .keys import CLUSTER
from .workers import worker_number

log = logging.getLogger(__name__)

BACKLOG = 1024  # a burst of listeners (a class opening the link at once) must not overflow the accept queue


@dataclass(frozen=True)
class Listening:
    public_url: str
    internal_url: str  # "" outside a cluster


def _bound(host: str, port: int, setting: str, reuse_port: bool = False) -> socket.socket:
    """A socket bound to host:port; an address in use (another server, or this one still running) is
    said with the address and the `setting` it comes from."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # worker processes share the port; the kernel spreads connections over them
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port} ({setting}): {exc.strerror or exc}") from exc
    return sock


def internal_port(base: int) -> int:
    """Worker n of `serve --workers N` takes port base + n - 1 (0: any free port, for each)."""
    return base + max(0, worker_number() - 1) if base else 0


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class Sockets:
    """The public socket and, in a cluster, the internal one: bound, not yet listening."""

    public: socket.socket
    internal: socket.socket | None

    def close(self) -> None:
        for sock in (self.public, self.internal):
            if sock is not None:
                sock.close()


def bind(config: Config, reuse_port: bool = False) -> Sockets:
    """Both addresses, bound before the server starts anything (a voice to load, channels to take), so an
    address in use is said at once. Both before either listens: a worker that cannot have its internal
    port must not take (and then drop) listeners' connections on the public port it shares."""
    public = _bound(config.server.host, config.server.port, "[server] host and port, or --host and --port", reuse_port)
    if not config.cluster.enabled:
        return Sockets(public, None)
    try:
        internal = _bound(
            config.cluster.internal_host,
            internal_port(config.cluster.internal_port),
            "[cluster] internal_host and internal_port, for the other servers",
        )
    except OSError:
        public.close()
        raise
    return Sockets(public, internal)


async def start_sites(
    runner: web.AppRunner, config: Config, reuse_port: bool = False, sockets: Sockets | None = None
) -> Listening:
    """Listen on the public address, and in a cluster on an internal one, which is then advertised
    so that the process starts taking its share of the channels."""
    sockets = sockets or bind(config, reuse_port)
    if sockets.internal is None:
        await web.SockSite(runner, sockets.public, backlog=BACKLOG).start()
        return Listening(_url(sockets.public), "")
    await web.SockSite(runner, sockets.internal, backlog=BACKLOG).start()
    await web.SockSite(runner, sockets.public, backlog=BACKLOG).start()
    runner.app[CLUSTER].advertise(_url(sockets.internal))
    return Listening(_url(sockets.public), _url(sockets.internal))


async def serve(app: web.Application, config: Config, sockets: Sockets) -> None:
    """Run on `sockets` until SIGTERM or SIGINT, then shut down in order (listeners told, channels
    handed over)."""
    # access_log=None: web/requestlog.py writes the access log (ids, no query strings) instead of aiohttp
    runner = web.AppRunner(app, access_log=None)
    try:
        await runner.setup()
    except BaseException:
        sockets.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    _wait_for_children_on(loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        listening = await start_sites(runner, config, sockets=sockets)
        log.info(
            "listening on %s%s",
            listening.public_url,
            f" (peers: {listening.internal_url})" * bool(listening.internal_url),
        )
        await stop.wait()
    finally:
        await runner.cleanup()


def _wait_for_children_on(loop: asyncio.AbstractEventLoop) -> None:
    """Have the event loop learn of its children's exits from pid descriptors, as Python 3.12's asyncio
    does by default. Python 3.11's starts a thread per child (an encoder per chunk) to wait for it, and
    the loop waits for that thread to get going, behind the synthesis threads' hold on the GIL: up to
    7 ms in a worker, while listeners wait for the step it started (docs/performance.md)."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))  # the call exists, but the kernel may be older than 5.3
    except OSError:
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)
    asyncio.set_child_watcher(watcher)
