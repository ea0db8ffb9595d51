"""Small helpers shared by the HTTP handlers: JSON errors, ids, tokens, bodies."""

import asyncio
import json
import socket
from collections.abc import Awaitable
from typing import Any, TypeVar

import numpy as np
from aiohttp import web

from broadcaster.core.ids import is_id
from broadcaster.errors import BadInput, NotFound

T = TypeVar("T")
# Ours nest three deep. The parser recurses once per level, and a collection that starts near
# Python's recursion limit fails in its callbacks (the collector's pause timer), so absurd nesting
# is refused before parsing.
MAX_NESTING = 64
_STEP = np.zeros(256, dtype=np.int32)  # by byte: +1 opens an array or object, -1 closes one
_STEP[[ord("["), ord("{")]], _STEP[[ord("]"), ord("}")]] = 1, -1
LEFT_POLL_S = 0.25


def cap_send_buffer(request: web.Request, size: int) -> None:
    """Bound what the transport and the kernel hold for one client (0: leave the defaults), so a
    client that stops reading makes writes wait soon, instead of parking megabytes in buffers."""
    if request.transport is None or size <= 0:
        return
    request.transport.set_write_buffer_limits(high=size)
    sock = request.transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def path_id(request: web.Request, name: str, what: str) -> str:
    value = request.match_info[name]
    if not is_id(value):
        raise NotFound(f"expected a {what} id of 16 hex digits, got {value[:40]!r}")
    return value


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        given = request.headers.get("Content-Type", "none")[:100]  # aiohttp reads a missing one as octet-stream
        raise UnsupportedMedia(f"expected Content-Type application/json, got {given!r}")
    body = parse_json(await request.read())
    if not isinstance(body, dict):
        raise BadInput(f"expected a JSON object, got {type(body).__name__}")
    return body


def parse_json(raw: bytes | str) -> Any:
    """json.loads, with every way it can fail on hostile input turned into BadInput."""
    if _nesting(raw) > MAX_NESTING:
        raise BadInput(f"expected a JSON object nested at most {MAX_NESTING} deep, got one nested deeper")
    try:
        # UTF-8 only, as on the WebSocket: json.loads would guess UTF-16 or UTF-32 from bytes.
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"expected a JSON object, got invalid JSON ({exc})") from None
    except (ValueError, RecursionError) as exc:  # 4300+ digit numbers, absurd nesting
        raise BadInput(
            f"expected a reasonable JSON object, got one Python refuses to parse ({type(exc).__name__})"
        ) from None


def _nesting(raw: bytes | str) -> int:
    """How deep arrays and objects nest, brackets inside strings not counted; 0 for a text with too few
    brackets to nest deeper than MAX_NESTING. No recursion, and no loop in Python (a running sum over
    the bytes between strings): the largest body the size limit allows takes a few milliseconds."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw  # byte for byte: the brackets stay
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return 0
    # Escapes read left to right as JSON reads them: what is left of a string's quotes are its two ends.
    # (A backslash outside a string is where the parser stops, so what follows it cannot recurse.)
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    outside = "".join(unescaped.split('"')[::2])  # the text between strings
    steps = _STEP[np.frombuffer(outside.encode(errors="surrogatepass"), dtype=np.uint8)]
    return int(np.cumsum(steps).max(initial=0))


def int_query(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > len(str(maximum)) or int(raw) > maximum:
        raise BadInput(f"expected {name} to be a whole number from 0 to {maximum}, got {raw[:40]!r}")
    return int(raw)


class UnsupportedMedia(BadInput):
    status = 415
    code = "unsupported_media_type"


def client_connected(request: web.Request) -> bool:
    """Whether the client's connection is still open (aiohttp closes it when the client hangs up)."""
    return request.transport is not None and not request.transport.is_closing()


async def while_connected(request: web.Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client hangs up first (aiohttp does not cancel handlers
    when a client leaves). For slow work on the client's behalf, such as decoding its upload."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=LEFT_POLL_S)
            if done:
                return task.result()
            if not client_connected(request):
                raise ConnectionResetError("the client left before its request was done")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
