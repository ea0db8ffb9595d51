"""Every error leaves as JSON with a code and a sentence; nothing leaves as a bare 500."""

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from broadcaster.errors import BadInput, PayloadTooLarge
from broadcaster.runtime.bus import BusUnavailable
from db.outage import database_unavailable

from .http_util import error_response

log = logging.getLogger(__name__)

DATABASE_RETRY_S = 5
BUS_RETRY_S = 2


@web.middleware
async def json_errors(request: web.Request, handler):  # noqa: ANN001, ANN201
    try:
        return await handler(request)
    except BadInput as exc:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return error_response(exc.status, exc.code, exc.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return error_response(exc.status, *_explain(exc, request), kept)
    except (RequestPayloadError, HttpProcessingError) as exc:  # a body that does not decode (bad gzip, a long line)
        log.info("unreadable body on %s %s: %s", request.method, request.path, exc)
        return error_response(400, "unreadable_body", f"the request body could not be read: {exc}"[:300])
    except BusUnavailable as exc:  # cluster mode: Redis is down or restarting
        log.warning("%s %s: %s", request.method, request.path, exc)
        message = "the cluster's event bus cannot be reached just now; try again shortly"
        return error_response(503, "bus_unavailable", message, {"Retry-After": str(BUS_RETRY_S)})
    except ConnectionError as exc:  # the client left mid-request (a reset while its body was read)
        if database_unavailable(exc):
            return _database_away(request, exc)
        log.info("client left during %s %s", request.method, request.path)
        return error_response(400, "client_disconnected", "the connection was lost while the request was read")
    except Exception as exc:
        if database_unavailable(exc):
            return _database_away(request, exc)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "the server hit an unexpected error; it has been logged")


def _database_away(request: web.Request, exc: Exception) -> web.Response:
    """Not a bug and not the client's mistake: the database is down or restarting. Try again soon."""
    log.warning("%s %s: the database is unreachable (%s)", request.method, request.path, type(exc).__name__)
    message = "the database cannot be reached just now; try again shortly"
    return error_response(503, "database_unavailable", message, {"Retry-After": str(DATABASE_RETRY_S)})


def _explain(exc: web.HTTPException, request: web.Request) -> tuple[str, str]:
    """A code and a sentence for aiohttp's own errors."""
    if exc.status == 404:
        return "not_found", f"nothing at {request.path[:200]!r}; see docs/protocol.md for the routes"
    if exc.status == 405:  # OPTIONS (CORS preflights) is in Allow too, but is no use to whoever reads this
        allowed = [m for m in exc.headers.get("Allow", "").split(",") if m.strip() not in ("", "OPTIONS")]
        return "method_not_allowed", f"{request.method} is not allowed here; use {', '.join(allowed) or '?'}"
    if exc.status == 413:
        return PayloadTooLarge.code, f"expected a body of at most {request.app._client_max_size} bytes"
    return (exc.reason or "error").lower().replace(" ", "_"), exc.text or exc.reason
