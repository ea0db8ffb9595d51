"""The bed under a channel's line: PUT and DELETE /api/channels/{channel}/bed (producers), and its
segments' audio, GET /api/channels/{channel}/beds/{track_id}/{chunk_id} (listeners)."""

from pathlib import Path

from aiohttp import web

from broadcaster.core.bed import Bed
from broadcaster.errors import BadInput, NotFound
from broadcaster.runtime.beds import scenes

from .access import producer_channel, require_listener
from .api import audio_format, audio_response
from .http_util import json_body, path_id, while_connected
from .keys import CLUSTER, CONFIG, STATION
from .messages import bed_json
from .replica import replica_of


async def put_bed(request: web.Request) -> web.Response:
    name = await producer_channel(request)
    body = await json_body(request)
    bed = await while_connected(request, request.app[STATION].set_bed(name, body))  # minutes of decoding, maybe
    return web.json_response({"bed": bed_json(name, bed)})


async def delete_bed(request: web.Request) -> web.Response:
    """Fades the bed out; a body may say over how long ({"fade_ms": 500})."""
    name = await producer_channel(request)
    body = await json_body(request) if request.can_read_body else {}
    if set(body) - {"fade_ms"}:
        raise BadInput(f'expected only "fade_ms" when stopping a bed, got {sorted(body)[:5]}')
    fading = await request.app[STATION].stop_bed(name, body)
    return web.json_response({"bed": None, "fades_out_at_ms": fading.fades_out_at_ms, "ends_at_ms": fading.ends_at_ms})


async def list_scenes(request: web.Request) -> web.Response:
    """The console's scene buttons: what the channel's ambience folder holds."""
    name = await producer_channel(request)
    music = request.app[CONFIG].music
    folder, found = scenes(Path(music.folder), name, music.ambience_folder)
    return web.json_response({"folder": folder, "scenes": [{"name": s.name, s.kind: s.relative} for s in found]})


async def bed_segment(request: web.Request) -> web.StreamResponse:
    """A segment of a bed the channel plays now (or is fading out): nothing else is served by this path."""
    name = request.match_info["channel"]
    track_id = path_id(request, "track_id", "track")
    chunk_id = path_id(request, "chunk_id", "chunk")
    fmt = audio_format(request)
    await request.app[STATION].channel_id(name)  # 404 first: no credential check, no feed for a made-up name
    credential = await require_listener(request, name)
    beds = await _beds(request, name)
    if not any(
        t.request_id == track_id and chunk_id in {s.chunk_id for s in t.segments} for b in beds for t in b.tracks
    ):
        raise NotFound(f"no bed segment {chunk_id} of track {track_id} on channel {name!r}")
    return await audio_response(request, track_id, chunk_id, fmt, credential)


async def _beds(request: web.Request, name: str) -> list[Bed]:
    station = request.app[STATION]
    if CLUSTER in request.app and name not in station.runners:
        channel = (await replica_of(request.app[CLUSTER].feeds, name)).channel
    else:
        channel = (await station.runner(name)).channel
    return [b for b in (channel.bed, *channel.fading_beds) if b is not None]
