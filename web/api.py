"""HTTP handlers: producers submit, anyone reads the queue, fetches chunks and acknowledges."""

import os

from aiohttp import web

from broadcaster.auth import Admission, Credential
from broadcaster.core.ids import is_id
from broadcaster.errors import BadInput, GenerationError, NotFound
from broadcaster.runtime.station import NotHere
from db.audio_store import FORMATS, AudioUnavailable

from .access import producer_channel, remote_of, require_listener
from .audience import MAX_REPORTS
from .clients import PEER_CLIENT
from .forward import BadPeer
from .http_util import error_response, json_body, path_id
from .keys import ACCESS, AUDIO, CLUSTER, CONFIG, HUB, METRICS, STATION, STORE
from .messages import queue_state_json, refresh_snapshot
from .ranges import RangeNotSatisfiable, parse_range

CONTENT_TYPES = {"mp3": "audio/mpeg", "flac": "audio/flac"}


async def submit_request(request: web.Request) -> web.Response:
    station = request.app[STATION]
    name = await producer_channel(request)
    body = await json_body(request)
    if "text" not in body:
        raise BadInput(f'expected a JSON object with "text", got keys {sorted(body)[:10]}')
    queued, position = await station.submit(
        name, body["text"], body.get("over", False), body.get("open", False), body.get("voice")
    )
    return web.json_response(
        {
            "request_id": queued.request_id,
            "status": queued.state.value,
            "position": position,
            "sentences": len(queued.sentences),
            "open": queued.writing is not None,
        },
        status=202,
    )


async def append_text(request: web.Request) -> web.Response:
    """More text for an open narration; `"final": true` closes it."""
    name = await producer_channel(request, append=True)
    request_id = path_id(request, "request_id", "request")
    body = await json_body(request)
    if "text" not in body:
        raise BadInput(f'expected a JSON object with "text", got keys {sorted(body)[:10]}')
    unknown = sorted(set(body) - {"text", "final"})
    if unknown:
        raise BadInput(f'expected only "text" and "final", got {unknown[:10]}')
    appended = await request.app[STATION].append(name, request_id, body["text"], body.get("final", False))
    return web.json_response(
        {
            "request_id": request_id,
            "status": appended.state.value,
            "sentences": len(appended.sentences),
            "open": appended.writing is not None,
        },
        status=202,
    )


async def producer_check(request: web.Request) -> web.Response:
    """Lets the console check a token before showing its controls, and link to the listener page: on the
    public address when there is one, else a path on this server. A private channel's link lacks its key,
    which is stored only as a digest (it was shown once, when made)."""
    name = await producer_channel(request)
    row = await request.app[STATION].channel_row(name)
    voices = request.app[STATION].voices.names
    server = request.app[CONFIG].server
    return web.json_response(
        {
            "channel": name,
            "producer": True,
            "style": row.style,
            "voices": voices,
            "private": row.listen_key_hash is not None,
            "listen_url": f"{server.public_url.rstrip('/')}/c/{name}",
        }
    )


async def skip_request(request: web.Request) -> web.Response:
    name = await producer_channel(request)
    request_id = path_id(request, "request_id", "request")
    on_air = await request.app[STATION].cancel(name, request_id, skip=True)
    return web.json_response({"request_id": request_id, "status": "cancelled", "skipped": on_air})


async def cancel_request(request: web.Request) -> web.Response:
    name = await producer_channel(request)
    request_id = path_id(request, "request_id", "request")
    on_air = await request.app[STATION].cancel(name, request_id, skip=False)  # placed within the lead
    return web.json_response({"request_id": request_id, "status": "cancelled", "skipped": on_air})


async def retry_request(request: web.Request) -> web.Response:
    name = await producer_channel(request)
    queued, position = await request.app[STATION].retry(name, path_id(request, "request_id", "request"))
    return web.json_response(
        {
            "request_id": queued.request_id,
            "status": queued.state.value,
            "position": position,
            "sentences": len(queued.sentences),
        },
        status=202,
    )


async def move_request(request: web.Request) -> web.Response:
    name = await producer_channel(request)
    request_id = path_id(request, "request_id", "request")
    body = await json_body(request)
    await request.app[STATION].move(name, request_id, body.get("position"))
    return web.json_response({"request_id": request_id, "position": body["position"]})


async def shuffle_queue(request: web.Request) -> web.Response:
    name = await producer_channel(request)
    await request.app[STATION].shuffle(name)
    return web.json_response({"shuffled": True})


async def set_repeat(request: web.Request) -> web.Response:
    name = await producer_channel(request)
    body = await json_body(request)
    await request.app[STATION].set_repeat(name, body.get("mode"))
    return web.json_response({"repeat": body["mode"]})


async def pause_channel(request: web.Request) -> web.Response:
    """Stop everything for every listener, a lead from now; 409 if already paused."""
    name = await producer_channel(request)
    paused = await request.app[STATION].pause(name)
    return web.json_response({"paused": True, "paused_at_ms": paused.at_ms})


async def resume_channel(request: web.Request) -> web.Response:
    """Go on from where it stopped, a lead from now; 409 if not paused."""
    name = await producer_channel(request)
    resumed = await request.app[STATION].resume(name)
    return web.json_response(
        {
            "paused": False,
            "paused_at_ms": resumed.paused_at_ms,
            "resumes_at_ms": resumed.at_ms,
            "shift_ms": resumed.shift_ms,
        }
    )


async def queue_state(request: web.Request) -> web.Response:
    station, name = request.app[STATION], request.match_info["channel"]
    if CLUSTER in request.app and name not in station.runners:
        state = await _queue_elsewhere(request, name)  # run by another process: as its owner last published it
        state["listeners"] = await request.app[CLUSTER].audience.total_now(name)
    else:
        runner = await station.runner(name)
        await require_listener(request, runner.name)
        async with runner.saved:
            state = queue_state_json(runner.channel, station.clock(), listed=None)
        state["listeners"] = request.app[HUB].total(name)
    return web.json_response(state)


async def _queue_elsewhere(request: web.Request, name: str) -> dict:
    """The state the channel's owner stored with its latest step, brought to now; a channel with none yet
    (its owner is starting), or with more waiting than that state lists, is asked of the owner itself."""
    await request.app[STATION].channel_id(name)  # 404 first
    await require_listener(request, name)
    snapshot = await request.app[CLUSTER].bus.snapshot(name)
    if snapshot is None or len(snapshot.state["queue"]) < snapshot.state.get("queue_length", 0):
        raise NotHere(name)  # the stored state lists only the head of a long queue: the owner lists it all
    return refresh_snapshot(snapshot.state, request.app[STATION].clock())


async def chunk_audio(request: web.Request) -> web.StreamResponse:
    chunk_id = path_id(request, "chunk_id", "chunk")
    fmt = audio_format(request)
    station = request.app[STATION]
    request_id, channel = await station.chunk_owner(chunk_id)
    credential = await require_listener(request, channel)
    return await audio_response(request, request_id, chunk_id, fmt, credential)


def audio_format(request: web.Request) -> str:
    fmt = request.query.get("format", "mp3")
    if fmt not in FORMATS:
        raise BadInput(f"expected format to be one of {list(FORMATS)}, got {fmt[:20]!r}")
    return fmt


async def audio_response(
    request: web.Request, request_id: str, chunk_id: str, fmt: str, credential: Credential
) -> web.StreamResponse:
    """A stored chunk's audio (a sentence, a track segment, a bed segment), whole or a range of it."""
    try:
        if fmt == "mp3":
            await request.app[STATION].delivery.ensure(request_id, chunk_id)
        data = await request.app[AUDIO].read(request_id, chunk_id, fmt)
    except FileNotFoundError:
        raise NotFound(f"the audio of chunk {chunk_id} is no longer stored") from None
    except AudioUnavailable as exc:
        return error_response(503, "audio_unavailable", f"the audio of chunk {chunk_id} cannot be read now: {exc}")
    except (GenerationError, OSError) as exc:
        return error_response(503, "encoding_failed", f"the MP3 of chunk {chunk_id} could not be made: {exc}")
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Type": CONTENT_TYPES[fmt],
        "Cache-Control": _cache_control(credential),
        "ETag": f'"{chunk_id}-{fmt}"',
    }
    try:
        wanted = parse_range(request.headers.get("Range"), len(data))
    except RangeNotSatisfiable as exc:
        return error_response(416, exc.code, exc.message, {"Content-Range": f"bytes */{len(data)}"})
    if wanted is None:
        request.app[METRICS].sent("chunk", len(data))
        return web.Response(body=data, headers=headers)
    headers["Content-Range"] = wanted.content_range(len(data))
    request.app[METRICS].sent("chunk", wanted.end + 1 - wanted.start)
    return web.Response(body=data[wanted.start : wanted.end + 1], status=206, headers=headers)


def _cache_control(credential: Credential) -> str:
    """A chunk never changes, so anyone may keep it; but a private channel's only for the listener who
    fetched it with the key: a shared cache would hand it to anyone who asks for its URL."""
    scope = "public" if credential.admission is Admission.PUBLIC else "private"
    return f"{scope}, max-age=604800, immutable"


async def played(request: web.Request) -> web.Response:
    """Acknowledgement for clients without a socket; ?connection_id= ties it to a WebSocket listener."""
    chunk_id = path_id(request, "chunk_id", "chunk")
    station, store = request.app[STATION], request.app[STORE]
    request.app[ACCESS].check_ack_rate(remote_of(request))
    chunk = await station.find_chunk(chunk_id)
    await require_listener(request, (await station.find_request(chunk.request_id)).channel)
    connection_id = request.query.get("connection_id")
    if connection_id is not None and not await store.connection_exists(connection_id):
        raise NotFound(f"no listener connection {connection_id[:40]!r}")
    received_ms = station.clock()
    recorded = await store.record_ack(chunk_id, connection_id, "http", received_ms)
    if recorded:
        request.app[METRICS].acknowledged(chunk, received_ms, "http")
    return web.json_response({"chunk_id": chunk_id, "recorded": recorded})


async def healthz(request: web.Request) -> web.Response:
    station = request.app[STATION]
    return web.json_response(
        {"status": "ok", "channels": len(station.runners), "server_time_ms": station.clock(), "process": os.getpid()}
    )


async def ready_reports(request: web.Request) -> web.Response:
    """From another process of the cluster: its listeners' ready reports for a channel run here."""
    if request.get(PEER_CLIENT) is None:
        raise BadPeer("expected a request from a server of this cluster")
    station = request.app[STATION]
    runner = await station.runner(request.match_info["channel"])
    reports = (await json_body(request)).get("reports")
    pairs = reports if isinstance(reports, list) else []
    if not all(isinstance(p, list) and len(p) == 2 and is_id(p[0]) and type(p[1]) is int for p in pairs[:MAX_REPORTS]):
        raise BadInput('expected {"reports": [[chunk_id, ready_at_ms], ...]}')
    for chunk_id, ready_at_ms in pairs[:MAX_REPORTS]:
        need_ms = runner.listener_ready(chunk_id, ready_at_ms)
        if need_ms is not None:
            request.app[METRICS].listener_needed(need_ms)
    return web.json_response({"status": "ok"})
