"""The `broadcaster` command: broadcaster/cli.py's commands, plus `serve`, which wires the server here
(the domain package does not know the web adapter)."""

import argparse
import asyncio
import gc
import logging
import os
from typing import TYPE_CHECKING

from broadcaster import cli
from broadcaster.config import Config
from broadcaster.errors import BadInput
from broadcaster.process import raise_open_file_limit, tune_allocator

from .workers import Supervisor, worker_number

if TYPE_CHECKING:
    from .serve import Sockets

log = logging.getLogger("broadcaster.serve")


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, serve=serve)


def serve(config: Config, args: argparse.Namespace) -> int:
    from .serve import bind

    config.check_cluster()
    workers = _workers(config, args.workers)
    worker = worker_number()
    supervising = workers > 1 and not worker
    # An address in use is said before anything starts. The supervisor only checks: its workers bind their own.
    sockets = bind(config, reuse_port=bool(worker))
    if supervising:
        sockets.close()
    if not worker:  # the supervisor, or the only process: check and prepare the database once
        asyncio.run(cli.check_database(config))  # a database at another revision is refused before anything starts
        if args.default_channel:
            asyncio.run(cli.ensure_channel(config, args.default_channel))
        print(f"broadcaster starting at {config.base_url} (data in {config.data_path.resolve()})", flush=True)
    if supervising:
        log.info("starting %d worker processes on port %d", workers, config.server.port)
        return Supervisor(["-m", "broadcaster", *args.argv], workers).run()  # each worker: this same command
    return _run(config, sockets)


def _workers(config: Config, asked: int | None) -> int:
    if asked is not None and asked < 1:
        raise BadInput(f"expected --workers of at least 1, got {asked}")
    if not config.cluster.enabled:
        if asked not in (None, 1):
            raise BadInput(
                f"expected one process without cluster mode, got --workers {asked}: several processes share a "
                "channel only through a PostgreSQL [server] database_url and a [cluster] redis_url (docs/cluster.md)"
            )
        return 1
    return asked or len(os.sched_getaffinity(0)) or 1  # the cores this process may use (a container's share)


def _run(config: Config, sockets: "Sockets") -> int:
    from .app import create_app
    from .serve import serve as serve_app

    tune_allocator()  # before the first thread
    before, after = raise_open_file_limit()
    if after != before:
        log.info("open files: limit raised from %d to %d", before, after)
    app = create_app(config)
    app.on_startup.append(_freeze_startup_heap)  # after the app's own start-up: voice and channels loaded
    asyncio.run(serve_app(app, config, sockets))
    return 0


async def _freeze_startup_heap(app) -> None:  # noqa: ANN001
    """What start-up made (modules, the voice, the channels: most of the heap) lives until exit: once
    frozen, no full collection walks it again, so each one stops the server for less time."""
    from .keys import METRICS

    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    app[METRICS].gc_frozen.set(frozen)
    log.info("start-up heap frozen: %d objects the collector no longer walks", frozen)
