"""The listener WebSocket: a snapshot on connect, then events; acks and time sync from the client.
A console (`?role=console`) first proves it holds the producer token; any socket is closed (4401)
once the credential that admitted it no longer would (web/revocation.py)."""

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiohttp import WSMsgType, web

from broadcaster.auth import Admission, Credential
from broadcaster.core.ids import is_id, new_id
from broadcaster.core.model import Chunk
from broadcaster.core.ratelimit import TokenBucket
from broadcaster.errors import BadInput, NotFound, RateLimited
from broadcaster.runtime.bus import BusUnavailable
from broadcaster.runtime.clock import wall_clock_ms
from broadcaster.runtime.runner import ChannelRunner

from .access import producer_credential, remote_of, require_listener
from .cors import check_socket_origin
from .fanout import TOO_SLOW, Listener
from .feed import FeedBroken
from .http_util import bearer_token, cap_send_buffer, parse_json
from .keys import ACCESS, CLUSTER, CONFIG, FEEDS, HUB, METRICS, STATION, STORE, WATCH
from .messages import error_json, queue_state_json
from .revocation import Watched

log = logging.getLogger(__name__)

RATE_LIMITED = 4029  # application close code: the client kept flooding after rate_limited errors
REFUSED = 4401  # application close code: the credential was refused, or no longer admits the connection
AUTH_TIMEOUT = 4408  # application close code: a console sent no auth message in time
TRY_AGAIN = 1013  # "try again later": the event feed could not be joined just now
READY_AT_RANGE_MS = 86_400_000
MAX_T0 = 2**53  # the largest integer a JavaScript number holds exactly; also rejects NaN and inf
MAX_REPORTED = 1000  # glitches or crossfades in one sync_report (a page reports every 10 s)
MAX_ERROR_MS = 60_000
SYNC_REPORT_MIN_MS = 5_000


async def channel_socket(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    channel = await _channel(request)  # 404 before the upgrade
    _batched(request)  # 400 for a value it does not know
    await check_socket_origin(request, channel.name)  # 403 for a page on an origin that may not listen
    credential = await _admit(request, channel.name)  # and 401 for a private channel without its key
    with app[ACCESS].connection(remote_of(request)):  # or 429
        return await _serve(request, channel, credential)


def _batched(request: web.Request) -> bool:
    """`?batch=1`: the client takes a step of several messages as one batch message."""
    value = request.query.get("batch", "0")
    if value not in ("0", "1"):
        raise BadInput(f'expected "batch" to be 0 or 1, got {value[:20]!r}')
    return value == "1"


@dataclass(frozen=True)
class _Channel:
    name: str
    channel_id: int
    runner: ChannelRunner | None  # None in a cluster: listeners follow the bus wherever the owner is


async def _channel(request: web.Request) -> _Channel:
    station, name = request.app[STATION], request.match_info["channel"]
    if station.clustered:
        return _Channel(name, await station.channel_id(name), None)
    runner = await station.runner(name)  # one process: load the channel if this is its first use
    return _Channel(runner.name, runner.channel_id, runner)


async def _admit(request: web.Request, name: str) -> Credential | None:
    """What admits the connection, checked before the upgrade. A console needs the producer token:
    from a client that can set headers, as `Authorization: Bearer`; a browser cannot, so None here,
    and its first message carries it (the token never travels in the URL)."""
    if request.query.get("role") != "console":
        return await require_listener(request, name)
    token = bearer_token(request)
    return None if token is None else await producer_credential(request, name, token)


async def _serve(request: web.Request, channel: _Channel, credential: Credential | None) -> web.WebSocketResponse:
    limits = request.app[CONFIG].limits
    # max_msg_size + 1: aiohttp refuses a message of exactly max_msg_size; the limit is inclusive.
    # compress=False: browsers always offer permessage-deflate, and a compressor per listener costs
    # ~100 KB of memory and CPU on every broadcast, for messages of a few hundred bytes.
    ws = web.WebSocketResponse(
        heartbeat=limits.ws_heartbeat_s,
        max_msg_size=limits.ws_max_message_bytes + 1,
        writer_limit=limits.ws_socket_buffer_bytes or 65536,
        compress=False,
    )
    try:
        await ws.prepare(request)
    except ConnectionError:
        return ws  # the client left during the upgrade: nobody to serve, nothing to report
    # Bound what the kernel holds for one listener, so a stalled reader fills its queue and is dropped
    # quickly instead of parking megabytes in socket buffers.
    cap_send_buffer(request, limits.ws_socket_buffer_bytes)
    if credential is None:
        credential = await _authenticate(ws, request, channel.name)
    if credential is None:
        _break_cycles(request, ws)
        return ws
    with request.app[WATCH].watch(channel.name, credential) as watched:
        await _listen(ws, request, channel, credential, watched)
    return ws


async def _listen(
    ws: web.WebSocketResponse, request: web.Request, channel: _Channel, credential: Credential, watched: Watched
) -> None:
    app = request.app
    station, hub, store, limits = app[STATION], app[HUB], app[STORE], app[CONFIG].limits
    connection_id = new_id()
    store.open_connection(
        connection_id, channel.channel_id, remote_of(request), request.headers.get("User-Agent", ""), station.clock()
    )
    listener = Listener(
        ws,
        connection_id,
        channel.name,
        limits.ws_send_queue,
        counted=credential.admission is not Admission.CONSOLE,  # a console is not an audience
        batched=_batched(request),
        transport=request.transport,
    )
    watched.on_revoke(lambda reason: hub.drop(listener, REFUSED, reason.encode(), quiet=True))
    try:
        if await _join(request, channel, listener):
            await _receive(ws, listener, request)
    finally:
        hub.remove(listener)
        await listener.close()
        _break_cycles(request, ws)
        store.close_connection(connection_id, station.clock())


async def _join(request: web.Request, channel: _Channel, listener: Listener) -> bool:
    """A snapshot, then every message after it, with no gap and no repeat (web/feed.py)."""
    app = request.app
    hub, runner = app[HUB], channel.runner
    if runner is None:
        feed = await app[FEEDS].feed(channel.name)
        try:
            await feed.join(listener, partial(app[CLUSTER].bus.snapshot, channel.name))
        except (FeedBroken, BusUnavailable) as exc:
            await listener.reply(error_json("unavailable", f"{exc}; reconnect in a moment"))
            await listener.close(TRY_AGAIN, b"event feed unavailable: reconnect")
            return False
        return True
    app[FEEDS].follow_now(channel.name)  # subscribed before anything more is announced
    async with runner.saved:  # a step's changes are announced once saved; the snapshot shows no more
        snapshot = {
            "type": "snapshot",
            "connection_id": listener.connection_id,
            "listeners": hub.total(runner.name) + listener.counted,
            **queue_state_json(runner.channel, app[STATION].clock()),
        }
        listener.send(snapshot)
        hub.add(listener)  # in the same critical section: no event can fall between the two
    return True


async def _authenticate(ws: web.WebSocketResponse, request: web.Request, name: str) -> Credential | None:
    """A console's first message proves it holds the producer token: {"type": "auth", "token": ...},
    within `ws_auth_timeout_s`. Answered `authenticated` (the snapshot follows), or an error and a close."""
    timeout_s = request.app[CONFIG].limits.ws_auth_timeout_s
    try:
        msg = await ws.receive(timeout=timeout_s)
    except TimeoutError:
        await _refuse(
            ws,
            AUTH_TIMEOUT,
            error_json(
                "auth_timeout",
                f'expected a first message {{"type": "auth", "token": ...}} within {timeout_s:g} s, got none',
            ),
        )
        return None
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return None  # it left
    try:
        credential = await producer_credential(request, name, _auth_token(msg))
    except BadInput as exc:
        await _refuse(ws, RATE_LIMITED if isinstance(exc, RateLimited) else REFUSED, error_json(exc.code, exc.message))
        return None
    try:
        await ws.send_json({"type": "authenticated", "channel": name})
    except (ConnectionError, RuntimeError):
        return None
    return credential


def _auth_token(msg) -> str:  # noqa: ANN001
    expected = 'expected a console\'s first message to be {"type": "auth", "token": "<producer token>"}'
    if msg.type != WSMsgType.TEXT:
        raise BadInput(f"{expected}, got a binary frame")
    message = _parse(msg.data)
    if message["type"] != "auth" or not isinstance(message.get("token"), str):
        raise BadInput(f"{expected}, got a message of type {message['type'][:40]!r}")
    return message["token"]


async def _refuse(ws: web.WebSocketResponse, code: int, error: dict[str, Any]) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_json(error)
        await ws.close(code=code, message=error["code"].encode())


def _break_cycles(request: web.Request, ws: web.WebSocketResponse) -> None:
    """aiohttp (3.14) leaves a finished WebSocket in reference cycles: the heartbeat callback stays on
    the connection's handler, and the error that ended an abrupt disconnect keeps its traceback, whose
    frames hold the response. ~40 objects per departed listener that only a full collection would free;
    with thousands of listeners coming and going they pile up in the oldest generation, holding memory
    and lengthening every full collection (each of which stops the server). Broken here, they are freed
    the moment the handler returns; a no-op where aiohttp does it."""
    protocol = request.protocol
    if getattr(protocol, "_data_received_cb", None) is not None:
        protocol._data_received_cb = None
    error, depth = ws.exception(), 0
    while error is not None and depth < 8:  # with the errors it was raised in handling of
        error.__traceback__ = None
        error, depth = error.__context__, depth + 1


async def _receive(ws: web.WebSocketResponse, listener: Listener, request: web.Request) -> None:
    limits, clock = request.app[CONFIG].limits, request.app[STATION].clock
    bucket = TokenBucket(limits.ws_messages_per_second, limits.ws_message_burst)
    refused = 0  # messages refused in a row
    async for msg in ws:
        if msg.type == WSMsgType.ERROR:
            log.info("listener %s: socket error %s", listener.connection_id, ws.exception())
            return
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and (wait_ms := bucket.take(clock())):
            refused += 1
            request.app[ACCESS].refused("ws_messages")
            if refused > limits.ws_message_burst:  # it ignores the errors: stop reading its flood
                await listener.close(RATE_LIMITED, b"rate limit: too many messages, ignored the errors")
                return
            reply = error_json(
                "rate_limited",
                f"expected at most {limits.ws_messages_per_second:g} messages a second "
                f"on one connection, got more; this one was ignored",
                retry_after_ms=wait_ms,
            )
        else:
            refused = 0
            reply = await _answer(msg, listener, request)
        if reply is not None and not await listener.reply(reply):
            await listener.close(TOO_SLOW, b"too slow: not reading replies")
            return


async def _answer(msg, listener: Listener, request: web.Request) -> dict[str, Any] | None:  # noqa: ANN001
    if msg.type == WSMsgType.BINARY:
        return error_json("bad_request", "expected JSON text frames, got a binary frame")
    if msg.type != WSMsgType.TEXT:
        return None
    received_us = _now_us(request.app[STATION].clock)
    try:
        return await _handle(_parse(msg.data), listener, request, received_us)
    except TooSoon as exc:
        return error_json(exc.code, exc.message, retry_after_ms=exc.wait_ms)
    except BadInput as exc:
        return error_json(exc.code, exc.message)


def _parse(text: str) -> dict[str, Any]:
    message = parse_json(text)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise BadInput('expected a JSON object with a string "type"')
    return message


async def _handle(message: dict[str, Any], listener: Listener, request: web.Request, received_us: int) -> dict | None:
    kind = message["type"]
    if kind == "time_sync":
        return _time_sync(message, request, received_us)
    if kind == "audio_played":
        return await _audio_played(message, listener, request, received_us // 1000)
    if kind == "sync_report":
        return _sync_report(message, listener, request, received_us // 1000)
    raise UnknownMessage(f"expected a message type of 'audio_played', 'time_sync' or 'sync_report', got {kind[:40]!r}")


def _time_sync(message: dict[str, Any], request: web.Request, received_us: int) -> dict[str, Any]:
    t0 = message.get("t0")
    if isinstance(t0, bool) or not isinstance(t0, (int, float)) or not abs(t0) < MAX_T0:
        raise BadInput(f'expected time_sync "t0" to be a number (client send time, ms), got {t0!r}'[:200])
    sent_us = _now_us(request.app[STATION].clock)
    # t1/t2 in whole milliseconds, and in microseconds: a page places audio by this clock to a
    # fraction of a millisecond, which rounded stamps (±0.5 ms each) would not allow.
    return {
        "type": "time_sync", "t0": t0, "t1": received_us // 1000, "t2": sent_us // 1000,
        "t1_us": received_us, "t2_us": sent_us,
    }  # fmt: skip


def _now_us(clock: Callable[[], int]) -> int:
    """The station's clock in microseconds. The wall clock has them; any other (a test's stepped clock)
    is read in whole milliseconds."""
    return time.time_ns() // 1000 if clock is wall_clock_ms else clock() * 1000


async def _audio_played(message: dict[str, Any], listener: Listener, request: web.Request, now_ms: int) -> dict:
    chunk_id = message.get("chunk_id")
    if not is_id(chunk_id):
        raise BadInput(f'expected audio_played "chunk_id" of 16 hex digits, got {str(chunk_id)[:40]!r}')
    ready_at_ms = _ready_at(message, now_ms)
    station = request.app[STATION]
    chunk = await _acknowledged_chunk(station, listener.channel, chunk_id)
    recorded = await request.app[STORE].record_ack(chunk_id, listener.connection_id, "ws", now_ms)
    if ready_at_ms is not None and not request.app[ACCESS].counts_ready_report(chunk_id, remote_of(request)):
        ready_at_ms = None  # recorded as delivered; the lead has heard this address on this chunk enough
    if recorded:
        request.app[METRICS].acknowledged(chunk, now_ms, "ws")
        runner = station.runners.get(listener.channel)
        if ready_at_ms is not None and runner is not None:
            need_ms = runner.listener_ready(chunk_id, ready_at_ms)
            if need_ms is not None:
                request.app[METRICS].listener_needed(need_ms)
        elif ready_at_ms is not None and CLUSTER in request.app:  # the owner tunes the lead: pass it on
            request.app[CLUSTER].reports.add(listener.channel, chunk_id, ready_at_ms)
    return {"type": "ack_recorded", "chunk_id": chunk_id, "duplicate": not recorded}


async def _acknowledged_chunk(station, channel: str, chunk_id: str) -> Chunk:  # noqa: ANN001
    """The chunk a listener says it played. Where this process runs the channel, only chunks on its
    timeline now or lately count, found in memory: a flood of made-up ids costs no database reads."""
    runner = station.runners.get(channel)
    if runner is None:  # run by another process of the cluster: the database knows
        chunk = await station.find_chunk(chunk_id)
        owner = (await station.find_request(chunk.request_id)).channel
    else:
        chunk, owner = runner.channel.placed_chunk(chunk_id), channel
        for other in station.runners.values():
            if chunk is None and (chunk := other.channel.placed_chunk(chunk_id)) is not None:
                owner = other.name
        if chunk is None:
            raise NotFound(f"no chunk {chunk_id} on channel {channel!r}'s timeline now or lately; nothing was recorded")
    if owner != channel:
        raise WrongChannel(
            f"expected a chunk of channel {channel!r} on its socket, got {chunk_id}, which is "
            "another channel's; nothing was recorded"
        )
    return chunk


class TooSoon(RateLimited):
    """A message of a kind the connection may send only so often, sent again too soon."""

    def __init__(self, message: str, wait_ms: int):
        super().__init__(message, -(-wait_ms // 1000))
        self.wait_ms = wait_ms


def _sync_report(message: dict[str, Any], listener: Listener, request: web.Request, now_ms: int) -> None:
    """How well a page keeps in step since its last report: output glitches it noticed, crossfades it
    made to get back on the timeline, moves to a larger output buffer (optional: pages before it
    did not send it), and its error at the moment. Counted in /metrics; no reply. One every
    SYNC_REPORT_MIN_MS at most, so that no socket can make the figures say what it likes."""
    glitches, crossfades = (_whole(message, key, MAX_REPORTED) for key in ("glitches", "crossfades"))
    buffer_moves = _whole({"buffer_moves": 0, **message}, "buffer_moves", 1)
    error_ms = message.get("error_ms")
    if isinstance(error_ms, bool) or not isinstance(error_ms, (int, float)) or not abs(error_ms) <= MAX_ERROR_MS:
        raise BadInput(
            f'expected sync_report "error_ms" to be a number of milliseconds within ±{MAX_ERROR_MS}, '
            f"got {str(error_ms)[:40]!r}"
        )
    if (wait_ms := listener.sync_reported_ms + SYNC_REPORT_MIN_MS - now_ms) > 0:
        raise TooSoon(
            f"expected at most one sync_report every {SYNC_REPORT_MIN_MS // 1000} s (a page sends one every 10 s)",
            wait_ms,
        )
    listener.sync_reported_ms = now_ms
    request.app[METRICS].listener_synced(glitches, crossfades, buffer_moves, error_ms)
    return None


def _whole(message: dict[str, Any], key: str, most: int) -> int:
    value = message.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise BadInput(f'expected sync_report "{key}" to be a whole number from 0 to {most}, got {str(value)[:40]!r}')
    return value


def _ready_at(message: dict[str, Any], now_ms: int) -> int | None:
    """The optional moment the listener had the chunk's audio ready to play, by the server's clock."""
    ready_at_ms = message.get("ready_at_ms")
    if ready_at_ms is None:
        return None
    whole = isinstance(ready_at_ms, int) and not isinstance(ready_at_ms, bool)
    if not whole or abs(ready_at_ms - now_ms) > READY_AT_RANGE_MS:
        raise BadInput(
            'expected audio_played "ready_at_ms" to be a whole number of milliseconds on the server\'s '
            f"clock within a day of now (when the audio was ready to play), got {str(ready_at_ms)[:40]!r}"
        )
    return ready_at_ms


class UnknownMessage(BadInput):
    code = "unknown_type"


class WrongChannel(BadInput):
    code = "wrong_channel"
