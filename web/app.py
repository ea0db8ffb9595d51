"""The aiohttp application: routes, and the start/stop of database, engine and station."""

import asyncio
import logging
import math
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from aiohttp import web

from broadcaster.config import Config
from broadcaster.errors import BadInput, GenerationError
from broadcaster.runtime.bus import InProcessBus
from broadcaster.runtime.clock import Clock, wall_clock_ms
from broadcaster.runtime.live import LiveStreams
from broadcaster.runtime.ownership import ServerLease, holder_id
from broadcaster.runtime.station import Station
from broadcaster.runtime.telemetry import PauseTimer, Telemetry
from db.audio_store import open_audio_store
from db.leases import Leases
from db.store import Store
from tts.engine import TtsEngine
from tts.loudness import level
from tts.voices import Voices, load_voices

from . import api, beds, cors, live, metrics, pages, stream, tracks, ws
from .clients import networks
from .fanout import Hub
from .feed import Feeds
from .forward import PEER_ONLY, through_owner
from .keys import ACCESS, AUDIO, CLUSTER, CONFIG, ENGINE, FEEDS, HUB, LIVE, METRICS, STATION, STORE, TRUSTED, WATCH
from .limits import Access
from .middleware import json_errors
from .publish import Announce, Publisher
from .requestlog import AUDIO_FETCH, quiet_malformed_requests, request_log, stamp_request_id
from .revocation import CredentialWatch

log = logging.getLogger(__name__)

EngineFactory = Callable[[Config], TtsEngine]


def make_engine(config: Config) -> TtsEngine:
    if config.tts.engine == "tone":
        from tts.tone_engine import ToneEngine

        t = config.tts
        return ToneEngine(t.tone_ms_per_char, t.tone_delay_ms, t.tone_fail_marker, t.tone_stall_marker)
    if config.tts.engine == "piper":
        from tts.piper_engine import PiperEngine

        t = config.tts
        return PiperEngine(
            t.piper_model or None,
            t.piper_workers,
            t.piper_memory_arena,
            t.piper_window_ms,
            config.data_path / "voices",
            t.piper_nice,
        )
    raise ValueError(f"expected tts engine 'piper' or 'tone', got {config.tts.engine!r}")


def create_app(
    config: Config, engine_factory: EngineFactory = make_engine, clock: Clock = wall_clock_ms
) -> web.Application:
    """The server. `clock` is its timeline's (Unix epoch ms): a test passes one it steps, and calls the
    station's `clock_moved()` after each step, instead of sleeping through playback. Rate limits and
    time-outs keep real time."""
    body_limit = max(64 * 1024, config.limits.max_text_chars * 8)
    # Heartbeats at their own times: aiohttp rounds a timer longer than timeout_ceil_threshold up to the
    # whole second, so each second's arrivals would be pinged together ever after. With thousands of
    # listeners that is a thousand pings (and then pongs) in one turn of the loop, tens of
    # milliseconds during which no announcement goes out (docs/performance.md).
    config.check_cluster()
    app = web.Application(
        middlewares=[request_log, json_errors, _forwarding],
        client_max_size=body_limit,
        handler_args={"timeout_ceil_threshold": math.inf},
    )
    app.on_response_prepare.append(stamp_request_id)
    app[CONFIG] = config
    app[TRUSTED] = networks(config.server.trusted_proxies)
    app[METRICS] = Telemetry()
    app[HUB] = Hub(app[METRICS])
    app[ACCESS] = Access(config.limits, wall_clock_ms, lambda reason: app[METRICS].refused.labels(reason=reason).inc())
    app[WATCH] = CredentialWatch(lambda name: app[STATION].gate.current(name), config.limits.credential_recheck_s)
    quiet_malformed_requests()
    app.cleanup_ctx.append(_lifecycle(engine_factory, clock))
    app.on_shutdown.append(_close_listeners)
    app.router.add_post("/api/channels/{channel}/requests", api.submit_request)
    app.router.add_get("/api/channels/{channel}/audio/queue", api.queue_state)
    app.router.add_get("/api/channels/{channel}/producer", api.producer_check)
    app.router.add_post("/api/channels/{channel}/tracks", tracks.add_track)
    app.router.add_post("/api/channels/{channel}/requests/{request_id}/text", api.append_text)
    app.router.add_post("/api/channels/{channel}/requests/{request_id}/skip", api.skip_request)
    app.router.add_post("/api/channels/{channel}/requests/{request_id}/cancel", api.cancel_request)
    app.router.add_post("/api/channels/{channel}/requests/{request_id}/retry", api.retry_request)
    app.router.add_post("/api/channels/{channel}/requests/{request_id}/move", api.move_request)
    app.router.add_post("/api/channels/{channel}/queue/shuffle", api.shuffle_queue)
    app.router.add_post("/api/channels/{channel}/queue/repeat", api.set_repeat)
    app.router.add_post("/api/channels/{channel}/pause", api.pause_channel)
    app.router.add_post("/api/channels/{channel}/resume", api.resume_channel)
    app.router.add_put("/api/channels/{channel}/bed", beds.put_bed)
    app.router.add_delete("/api/channels/{channel}/bed", beds.delete_bed)
    app.router.add_get("/api/channels/{channel}/beds/{track_id}/{chunk_id}", beds.bed_segment)
    app.router.add_get("/api/channels/{channel}/scenes", beds.list_scenes)
    app.router.add_post("/api/channels/{channel}/ready", api.ready_reports, name=PEER_ONLY + "ready")
    app.router.add_get("/api/audio/stream/{request_id}", stream.request_stream)
    app.router.add_get("/api/audio/chunks/{chunk_id}", api.chunk_audio, name=AUDIO_FETCH)
    app.router.add_post("/api/audio/played/{chunk_id}", api.played)
    app.router.add_get("/ws/channels/{channel}", ws.channel_socket)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/metrics", metrics.scrape)
    app.router.add_get("/", pages.index)
    app.router.add_get("/c/{channel}", pages.listener_page)
    app.router.add_get("/c/{channel}/console", pages.console_page)
    app.router.add_get("/c/{channel}/live.mp3", live.live_mp3)
    app.router.add_get("/static/{name}", pages.static_file)
    cors.setup(app)  # preflights and allow headers for the public reads above
    return app


def _lifecycle(engine_factory: EngineFactory, clock: Clock):  # noqa: ANN202
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        gc_pauses = PauseTimer(app[METRICS].gc_paused)
        gc_pauses.start()
        config.data_path.mkdir(parents=True, exist_ok=True)
        node = holder_id()  # this process, in leases and on the listener connections it records
        store = Store(config.database_url, holder=node)
        await store.create_schema()
        cluster = _cluster(config, store, app, node, clock) if config.cluster.enabled else None
        # One server per database, unless they form a cluster (then one owner per channel instead).
        server_lease = None if cluster else ServerLease(Leases(store.engine), on_lost=_stop_serving)
        try:
            await (cluster.start() if cluster else server_lease.start())  # or refuse: see ServerLease
        except BaseException:
            await store.close()
            gc_pauses.stop()
            raise
        try:
            engine, voices = await _engines(config, engine_factory)
        except BaseException:
            await (cluster.close() if cluster else server_lease.stop())
            await store.close()
            gc_pauses.stop()
            raise
        cache_bytes = int(config.server.chunk_cache_mb * 1024 * 1024)
        # In a cluster the audio lives in the database, so every process serves every chunk (docs/cluster.md).
        audio = open_audio_store(config.data_path, store.engine, shared=bool(cluster), cache_bytes=cache_bytes)
        if cluster is None:
            bus = InProcessBus()
            app[FEEDS] = Feeds(bus, app[HUB], clock)
            announce = _in_process(bus, app[FEEDS])
        else:
            app[FEEDS], app[CLUSTER], announce = cluster.feeds, cluster, cluster.announce
        publish = Publisher(announce, lambda: app[STATION].runners)
        station = Station(
            config,
            store,
            audio,
            engine,
            publish,
            metrics=app[METRICS],
            audience=app[HUB].total,
            clustered=bool(cluster),
            voices=voices,
            clock=clock,
        )
        app[STORE], app[AUDIO], app[ENGINE], app[STATION] = store, audio, engine, station
        app[LIVE] = LiveStreams(audio, config.live, station.clock, app[METRICS])
        if cluster:
            cluster.attach(station)
        await station.start()
        log.info("serving %d channel(s) with the %s engine", len(station.runners), engine.name)
        yield
        await app[LIVE].close()
        if cluster:
            await cluster.close()  # hands its channels over at once
        await publish.close()
        await station.stop()
        await voices.close()
        await engine.close()
        if server_lease:
            await server_lease.stop()
        await store.close()
        gc_pauses.stop()

    return lifecycle


async def _engines(config: Config, engine_factory: EngineFactory) -> tuple[TtsEngine, Voices]:
    """The default voice and the named ones, loaded and leveled."""
    engine = await asyncio.to_thread(engine_factory, config)  # loading a voice takes a moment
    engine = await level(engine, config.music.target_lufs)
    await engine.idle()  # leveling spoke a passage: give its working memory back
    log.info("%s voice leveled by %+.1f dB to %g LUFS", engine.name, engine.gain_db, config.music.target_lufs)
    try:
        return engine, await _voices(config, engine, engine_factory)
    except BaseException:
        await engine.close()
        raise


async def _voices(config: Config, engine: TtsEngine, engine_factory: EngineFactory) -> Voices:
    """The named voices, each made and leveled now: a voice that cannot be made stops the start with why."""
    tts = config.tts

    def open_model(model: str) -> TtsEngine:
        return engine_factory(replace(config, tts=replace(tts, piper_model=model)))

    try:
        voices = await load_voices(engine, tts.voices, tts.piper_model, open_model, config.music.target_lufs)
    except GenerationError as exc:
        raise BadInput(f"[tts.voices]: {exc}") from None
    for name in voices.names:
        log.info("voice %s ready, leveled by %+.1f dB", name, voices.named[name].gain_db)
    return voices


def _cluster(config: Config, store: Store, app: web.Application, node: str, clock: Clock):  # noqa: ANN202
    """Cluster mode's pieces; imported here, so that one server does not load Redis's client."""
    from .cluster import Cluster

    return Cluster(config, store, app[HUB], clock, app[METRICS], node)


def _in_process(bus: InProcessBus, feeds: Feeds) -> Announce:
    """One process: the bus hands a step's messages to the feed, and so to the listeners, at once."""

    def announce(runner, messages) -> None:  # noqa: ANN001
        feeds.follow_now(runner.name)
        bus.publish_now(runner.name, runner.epoch, messages)

    return announce


@web.middleware
async def _forwarding(request: web.Request, handler):  # noqa: ANN001, ANN202
    """In a cluster, what only a channel's owner can do goes to it (web/forward.py)."""
    cluster = request.app.get(CLUSTER)
    if cluster is None:
        return await handler(request)
    return await through_owner(cluster.forwarder, request.app[STATION], request, handler)


def _stop_serving() -> None:
    """The server lease was lost (this process was paused past it): stop, as on SIGTERM."""
    os.kill(os.getpid(), signal.SIGTERM)


async def _close_listeners(app: web.Application) -> None:
    """Say goodbye (1001), end live.mp3 players and stop decodes before aiohttp waits for open handlers,
    so shutdown is prompt."""
    app[STATION].decoders.cancel_all()
    await app[WATCH].close()
    await app[HUB].close_all()
    await app[LIVE].close()  # live.mp3 never ends by itself: its players would hold the stop for a minute
