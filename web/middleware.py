"""Every error leaves as JSON with a code and a sentence; nothing leaves as a bare 500."""

import logging

from aiohttp import web

from broadcaster.errors import BadInput, PayloadTooLarge

from .http_util import error_response

log = logging.getLogger(__name__)


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
    except ConnectionError:  # the client left mid-request (a reset while its body was read): not our error
        log.info("client left during %s %s", request.method, request.path)
        return error_response(400, "client_disconnected", "the connection was lost while the request was read")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "the server hit an unexpected error; it has been logged")


def _explain(exc: web.HTTPException, request: web.Request) -> tuple[str, str]:
    """A code and a sentence for aiohttp's own errors."""
    if exc.status == 404:
        return "not_found", f"nothing at {request.path[:200]!r}; see docs/protocol.md for the routes"
    if exc.status == 405:
        return "method_not_allowed", f"{request.method} is not allowed here; use {exc.headers.get('Allow', '?')}"
    if exc.status == 413:
        return PayloadTooLarge.code, f"expected a body of at most {request.app._client_max_size} bytes"
    return (exc.reason or "error").lower().replace(" ", "_"), exc.text or exc.reason
