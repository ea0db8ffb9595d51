"""Command line: serve, channel create/list/token/key, say, listen, cleanup, db upgrade."""

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from broadcaster import logs
from broadcaster.config import Config, load_config
from broadcaster.errors import BadInput, BroadcasterError, NotFound, Unauthorized

Command = Callable[[Config, argparse.Namespace], int]


def main(argv: list[str] | None = None, serve: Command | None = None) -> int:
    """The command line. `serve` runs the server: the web adapter passes it (web/cli.py, the installed
    `broadcaster` command), so this package never imports the adapter that wires it."""
    args = _parser(serve or _no_server).parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # as given: worker processes are started with it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config).with_server(
            data_dir=args.data_dir, host=getattr(args, "host", None), port=getattr(args, "port", None)
        )
        logs.configure(config.server.log_format)  # replaces the set-up above once the config is known
        return args.run(config, args)
    except BroadcasterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not _outside(exc):
            raise  # our bug: the traceback is what we need
        print(f"error: {type(exc).__name__}: {str(exc) or 'no details'}"[:500], file=sys.stderr)
        return 1


# What goes wrong around us rather than in us: the network, the file system, the database or a server
# refusing. One line says it; a traceback would only hide it.
OUTSIDE_MODULES = ("aiohttp.", "websockets.", "sqlalchemy.", "asyncpg.", "redis.")


def _outside(exc: Exception) -> bool:
    return isinstance(exc, OSError | UnicodeDecodeError) or type(exc).__module__.startswith(OUTSIDE_MODULES)


def _no_server(config: Config, args: argparse.Namespace) -> int:
    raise BadInput("expected the 'broadcaster' command (web/cli.py) to run the server")


def _parser(serve_command: Command) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="TOML config file (defaults are built in)")
    common.add_argument("--data-dir", metavar="DIR", help="where the database and audio live")
    parser = argparse.ArgumentParser(prog="broadcaster", description="Synchronized radio for group listening.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--default-channel", metavar="NAME", help="create this channel if there is none")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="server processes sharing the port (cluster mode only; default there: one per core)",
    )
    serve.set_defaults(run=serve_command)

    channel = sub.add_parser("channel", help="manage channels").add_subparsers(required=True, metavar="ACTION")
    create = channel.add_parser("create", parents=[common], help="create a channel and print its producer token")
    create.add_argument("name")
    create.add_argument("--json", action="store_true")
    create.add_argument(
        "--radio", action="store_true", help="a radio channel: the auto-DJ plays the music folder when idle"
    )
    create.add_argument(
        "--private", action="store_true", help="listeners need a listen key (printed, and part of the listen link)"
    )
    create.set_defaults(run=_channel_create)
    listing = channel.add_parser("list", parents=[common], help="list channels")
    listing.set_defaults(run=_channel_list)
    rotate = channel.add_parser(
        "token", parents=[common], help="issue a new producer token (the old one stops working)"
    )
    rotate.add_argument("name")
    rotate.add_argument("--json", action="store_true")
    rotate.set_defaults(run=_channel_token)
    key = channel.add_parser(
        "key", parents=[common], help="make a channel private with a new listen key (the old one stops working)"
    )
    key.add_argument("name")
    key.add_argument("--off", action="store_true", help="make the channel public again")
    key.add_argument("--json", action="store_true")
    key.set_defaults(run=_channel_key)
    remove = channel.add_parser(
        "delete", parents=[common], help="delete a channel with its requests and their audio (servers stopped)"
    )
    remove.add_argument("name")
    remove.add_argument("--yes", action="store_true", help="delete for good (without it, nothing is deleted)")
    remove.set_defaults(run=_channel_delete)

    say = sub.add_parser("say", parents=[common], help="put narration on the air")
    say.add_argument("channel")
    say.add_argument("text", nargs="?", help="what to say (with --stream: none, standard input is read)")
    say.add_argument(
        "--stream",
        action="store_true",
        help="speak standard input as it arrives, sentence by sentence (some-llm-command | broadcaster say CH --stream)",
    )
    say.add_argument("--token", default=os.environ.get("BROADCASTER_TOKEN"), help="producer token ($BROADCASTER_TOKEN)")
    say.add_argument("--server", help="server URL (default from config)")
    say.add_argument("--voice", help="one of the server's named voices ([tts.voices]); default: its default voice")
    say.set_defaults(run=_say)

    listen = sub.add_parser("listen", parents=[common], help="follow a channel headless, optionally saving a WAV")
    listen.add_argument("channel")
    listen.add_argument("--out", metavar="WAV")
    listen.add_argument("--server", help="server URL (default from config)")
    listen.add_argument(
        "--key",
        default=os.environ.get("BROADCASTER_LISTEN_KEY"),
        help="listen key of a private channel ($BROADCASTER_LISTEN_KEY)",
    )
    listen.add_argument("--requests", type=int, default=0, help="stop after this many requests finished (0 = never)")
    listen.add_argument("--seconds", type=float, default=0, help="stop after this long (0 = never)")
    listen.set_defaults(run=_listen)

    cleanup = sub.add_parser("cleanup", parents=[common], help="purge old played, failed and cancelled audio now")
    cleanup.set_defaults(run=_cleanup)

    database = sub.add_parser("db", help="the database's schema").add_subparsers(required=True, metavar="ACTION")
    upgrade = database.add_parser(
        "upgrade", parents=[common], help="migrate the database to this version's tables (stop the servers first)"
    )
    upgrade.set_defaults(run=_db_upgrade)
    return parser


async def ensure_channel(config: Config, name: str) -> None:
    from broadcaster.runtime.accounts import create_channel

    store = await _open_store(config)
    try:
        existing = await store.channels()
        if existing:
            for row in existing:
                key = "?key=<its listen key>" if row.listen_key_hash else ""
                print(f"channel {row.name}: listen at {config.base_url}/c/{row.name}{key}, console at .../console")
            print("(a producer token is shown once; 'broadcaster channel token NAME' issues a new one)")
            return
        made = await create_channel(store, name)
        print(
            f"created channel {made.name}\n  listen at:      {config.base_url}/c/{made.name}\n"
            f"  console at:     {config.base_url}/c/{made.name}/console\n  producer token: {made.token}"
        )
    finally:
        await store.close()


async def check_database(config: Config) -> None:
    store = await _open_store(config)
    await store.close()


def _existing_database(config: Config) -> None:
    """Commands about what a server keeps need its database: a wrong --data-dir (or the working directory
    a relative one is read from) must not answer from an empty new one, or purge nothing, ever."""
    database = config.data_path / "broadcaster.db"
    if not config.server.database_url and not database.exists():
        raise BadInput(
            f"expected a Broadcaster database at {database.resolve()}, found none; is --data-dir right? "
            "(relative to the directory you run this from)"
        )


async def _open_store(config: Config):  # noqa: ANN202
    from db.store import Store

    config.data_path.mkdir(parents=True, exist_ok=True)
    store = Store(config.database_url)
    await store.create_schema()
    return store


def _channel_create(config: Config, args: argparse.Namespace) -> int:
    from broadcaster.runtime.accounts import create_channel

    database = config.data_path / "broadcaster.db"
    if not config.server.database_url and not database.exists():
        print(
            f"note: no database is at {database.resolve()}, so a new one is made there; a server sees this "
            "channel only if it runs on the same --data-dir",
            file=sys.stderr,
        )

    async def run() -> None:
        store = await _open_store(config)
        try:
            made = await create_channel(
                store, args.name, style="radio" if args.radio else "campaign", private=args.private
            )
        finally:
            await store.close()
        url = _listen_url(config, made.name, made.listen_key)
        if args.json:
            print(
                json.dumps(
                    {
                        "channel": made.name,
                        "producer_token": made.token,
                        "listen_url": url,
                        "listen_key": made.listen_key,
                    }
                )
            )
        else:
            print(f"channel:        {made.name}\nproducer token: {made.token}\nlisten at:      {url}")

    asyncio.run(run())
    return 0


def _channel_token(config: Config, args: argparse.Namespace) -> int:
    from broadcaster.runtime.accounts import new_producer_token

    _existing_database(config)

    async def run() -> str:
        store = await _open_store(config)
        try:
            return await new_producer_token(store, args.name)
        finally:
            await store.close()

    token = asyncio.run(run())
    print(json.dumps({"channel": args.name, "producer_token": token}) if args.json else f"producer token: {token}")
    return 0


def _channel_key(config: Config, args: argparse.Namespace) -> int:
    from broadcaster.runtime.accounts import set_listen_key

    _existing_database(config)

    async def run() -> str | None:
        store = await _open_store(config)
        try:
            return await set_listen_key(store, args.name, private=not args.off)
        finally:
            await store.close()

    key = asyncio.run(run())
    url = _listen_url(config, args.name, key)
    if args.json:
        print(json.dumps({"channel": args.name, "listen_key": key, "listen_url": url}))
    else:
        print(f"listen key:     {key}\nlisten at:      {url}" if key else f"{args.name} is public: {url}")
    return 0


def _channel_delete(config: Config, args: argparse.Namespace) -> int:
    from broadcaster.runtime.accounts import delete_channel
    from db.audio_store import open_audio_store

    _existing_database(config)
    if not args.yes:
        raise BadInput(
            f"deleting {args.name!r} removes the channel, every request on it and all their audio, for good "
            "(the music folder is left alone); add --yes to go ahead"
        )

    async def run() -> tuple[int, int]:
        store = await _open_store(config)
        try:
            await _refuse_while_served(store.engine, "broadcaster channel delete")
            audio = open_audio_store(config.data_path, store.engine, shared=config.cluster.enabled)
            return await delete_channel(store, audio, args.name)
        finally:
            await store.close()

    requests, freed = asyncio.run(run())
    print(f"deleted channel {args.name}: {requests} requests and tracks, {freed / 1e6:.1f} MB of audio")
    return 0


def _listen_url(config: Config, name: str, key: str | None) -> str:
    return f"{config.base_url}/c/{name}" + (f"?key={key}" if key else "")


def _channel_list(config: Config, args: argparse.Namespace) -> int:
    _existing_database(config)

    async def run() -> None:
        store = await _open_store(config)
        try:
            for row in await store.channels():
                print(f"{row.name}\t{config.base_url}/c/{row.name}\t{'private' if row.listen_key_hash else 'public'}")
        finally:
            await store.close()

    asyncio.run(run())
    return 0


def _say(config: Config, args: argparse.Namespace) -> int:
    from broadcaster.client import submit

    if not args.token:
        print("error: expected a producer token via --token or $BROADCASTER_TOKEN", file=sys.stderr)
        return 2
    server = args.server or config.base_url
    if args.stream == (args.text is not None):
        print("error: expected the text to say, or --stream to read it from standard input", file=sys.stderr)
        return 2
    if args.stream:
        return asyncio.run(_say_stream(server, args.channel, args.token, args.voice))
    status, body = asyncio.run(submit(server, args.channel, args.text, args.token, args.voice))
    print(json.dumps(body))
    return 0 if status == 202 else 1


async def _say_stream(server: str, channel: str, token: str, voice: str | None) -> int:
    """Standard input into an open narration, as it arrives (not line by line: a word is enough)."""
    import codecs

    from broadcaster.client import OpenNarration, ProducerError

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    read = os.read
    try:
        async with OpenNarration(server, channel, token, voice=voice) as story:
            while data := await asyncio.to_thread(read, sys.stdin.fileno(), 65536):
                await story.write(decoder.decode(data))
            await story.write(decoder.decode(b"", final=True))
    except ProducerError as exc:
        print(json.dumps(exc.body))
        return 1
    print(json.dumps(story.answer))
    return 0


def _listen(config: Config, args: argparse.Namespace) -> int:
    from websockets.exceptions import InvalidStatus

    from broadcaster.client import listen

    out = Path(args.out) if args.out else None
    try:
        asyncio.run(
            listen(args.server or config.base_url, args.channel, out, args.requests, args.seconds, key=args.key)
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status == 401:
            wanted = "a listen key that works" if args.key else "its listen key"
            raise Unauthorized(
                f"{args.channel} is private: pass {wanted} with --key (what follows ?key= in its link)"
            ) from None
        if status == 404:
            raise NotFound(
                f"no channel {args.channel!r} on that server (broadcaster channel list shows them)"
            ) from None
        raise
    if out is not None:
        print(f"wrote what was heard to {out}")
    return 0


def _cleanup(config: Config, args: argparse.Namespace) -> int:
    from broadcaster.runtime.cleanup import orphan_grace_s, purge
    from db.audio_store import open_audio_store

    _existing_database(config)  # a typo in a cron line would purge nothing, ever

    async def run() -> dict[str, int]:
        store = await _open_store(config)
        try:
            retention_ms = int(config.cleanup.retention_days * 86_400_000)
            from broadcaster.runtime.clock import wall_clock_ms

            audio = open_audio_store(config.data_path, store.engine, shared=config.cluster.enabled)
            result = await purge(store, audio, wall_clock_ms() - retention_ms, orphan_grace_s(config.music))
            return result.summary()
        finally:
            await store.close()

    summary = asyncio.run(run())
    print(json.dumps(summary))
    print(
        f"purged {summary['requests']} finished requests older than {config.cleanup.retention_days:g} days "
        f"([cleanup] retention_days) and {summary['orphans']} orphaned files: {summary['bytes'] / 1e6:.1f} MB freed",
        file=sys.stderr,
    )
    return 0


async def _refuse_while_served(engine, command: str = "broadcaster db upgrade") -> None:  # noqa: ANN001
    """Migrating or deleting a channel under a running server would change rows beneath it (it would
    write them back, or run a channel that is gone): every server must be stopped first."""
    from sqlalchemy import inspect

    from broadcaster.runtime.ownership import NODE, SERVER, gone
    from db.leases import Leases

    async with engine.connect() as conn:
        if not await conn.run_sync(lambda sync: inspect(sync).has_table("leases")):
            return  # made before servers took leases
    leases = Leases(engine)
    holding = await leases.current(SERVER)
    serving = [holding.holder] if holding is not None else []
    serving += [h.holder for h in (await leases.live(NODE)).values()]  # the members of a cluster
    serving = [holder for holder in serving if not gone(holder)]
    if serving:
        who = ", ".join(holder.rsplit(":", 1)[0] for holder in serving[:5])
        count = "a server" if len(serving) == 1 else f"{len(serving)} servers"
        verb = "is" if len(serving) == 1 else "are"
        raise BroadcasterError(
            f"{count} ({who}, host:pid) {verb} serving this database; stop every one before '{command}'"
        )


def _db_upgrade(config: Config, args: argparse.Namespace) -> int:
    from db.schema import upgrade
    from db.store import make_engine

    async def run() -> tuple[str | None, str]:
        config.data_path.mkdir(parents=True, exist_ok=True)
        engine = make_engine(config.database_url)
        try:
            await _refuse_while_served(engine)
            return await upgrade(engine)
        finally:
            await engine.dispose()

    before, after = asyncio.run(run())
    if before == after:
        print(f"the database is already at revision {after}")
    else:
        print(f"the database is now at revision {after} (it was at {before or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
