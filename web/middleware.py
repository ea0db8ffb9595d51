"""Every error leaves as JSON with a code and a sentence; nothing leaves as a bare 500."""

import logging

from aiohttp import web

from broadcaster.errors import BadInput

from .http_util import error_response

log = logging.getLogger(__name__)


@web.middleware
async def json_errors(request: web.Request, handler):  # noqa: ANN001, ANN201
    try:
        return await handler(request)
    except BadInput as exc:
        headers = {"Retry-After": "5"} if exc.status == 429 else None
        return error_response(exc.status, exc.code, exc.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = (exc.reason or "error").lower().replace(" ", "_")
        kept = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return error_response(exc.status, code, exc.text or exc.reason, kept)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "the server hit an unexpected error; it has been logged")
