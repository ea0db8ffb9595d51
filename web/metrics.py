"""GET /metrics: the server's metrics in the Prometheus text format (docs/observability.md)."""

import asyncio
import hmac
import logging
from collections import Counter

from aiohttp import web

from broadcaster.errors import Unauthorized
from broadcaster.process import malloc_usage
from broadcaster.runtime.telemetry import CONTENT_TYPE
from db.stats import request_counts

from .http_util import bearer_token
from .keys import AUDIO, CLUSTER, CONFIG, HUB, LIVE, METRICS, STATION, STORE

log = logging.getLogger(__name__)


async def scrape(request: web.Request) -> web.Response:
    app = request.app
    required = app[CONFIG].server.metrics_token
    if required and not hmac.compare_digest((bearer_token(request) or "").encode(), required.encode()):
        raise Unauthorized("expected 'Authorization: Bearer <metrics_token>' from the server's config for /metrics")
    telemetry = app[METRICS]
    try:
        counts, channels = await request_counts(app[STORE])
    except Exception:  # the database is down: say so in the log, still report everything else
        log.warning("metrics: could not count requests", exc_info=True)
        counts, channels = {}, []
    loaded = list(app[STATION].runners)
    telemetry.set_request_counts(counts, [*channels, *loaded])
    telemetry.set_listeners(listener_counts(app, loaded))
    telemetry.know_channels(loaded)
    telemetry.set_leads({name: runner.channel.lead_ms for name, runner in app[STATION].runners.items()})
    telemetry.set_chunk_cache(app[AUDIO].cached_bytes)
    telemetry.channels_run.set(len(loaded))
    if CLUSTER in app:
        app[CLUSTER].observe()
    telemetry.set_malloc(await asyncio.to_thread(malloc_usage))
    station = app[STATION]
    telemetry.set_synthesis(
        station.synthesis.backlog, station.synthesis.speed, station.streaming_count(), station.synthesis.live_capacity()
    )
    return web.Response(
        body=telemetry.render().encode(), headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
    )


def listener_counts(app: web.Application, channels: list[str]) -> Counter[tuple[str, str]]:
    """(channel, kind) -> connected now; every loaded channel appears, with 0 where nobody listens."""
    counts: Counter[tuple[str, str]] = Counter(
        {(name, kind): 0 for name in channels for kind in ("websocket", "console", "live")}
    )
    for name, group in app[HUB].listeners.items():
        for listener in group:
            counts[name, "websocket" if listener.counted else "console"] += 1
    for name, live in app[LIVE].streams.items():
        counts[name, "live"] += len(live.listeners)
    return counts
