"""An id for every HTTP request, the access log, and HTTP responses counted by status class.

`request_log` is the outermost middleware, so it sees the status that actually
leaves (the JSON errors included). It binds the request's id, and the channel
and request ids of its path, for every log line written while the request is
handled; the id goes back to the client as `X-Request-Id`.

Successful chunk fetches are left out of the access log unless `[server]
log_audio_fetches` is on: every listener fetches every sentence, so with a
thousand listeners they are a thousand lines per sentence, and writing them
took a seventh of the server's time during a burst of fetches. They are
counted in the metrics either way.

The access log writes the path without its query string: a query may carry a
listen key or a token, and logs are kept longer and shown to more people than
keys should be. The path stays percent-encoded, so nothing in it can break a line.

A request aiohttp cannot even parse (garbage bytes, a bad request line, an
invalid header) never reaches a handler; aiohttp answers 400 itself and logs
it, as an ERROR with a traceback (or, for a bad method on a connection's first
request, at DEBUG, unseen). A filter on its logger turns either into one
warning line saying what was wrong and from whom: a client's mistake, not ours.
"""

import logging
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from broadcaster import logs
from broadcaster.auth import valid_channel_name
from broadcaster.core.ids import is_id, new_id

from .clients import TRUSTED, client_address
from .keys import CONFIG, METRICS

access_log = logging.getLogger("broadcaster.access")

HTTP_REQUEST = web.RequestKey("http_request", str)
AUDIO_FETCH = "chunk_audio"  # the route's name
MAX_LOGGED_PATH = 300


@web.middleware
async def request_log(request: web.Request, handler):  # noqa: ANN001, ANN201
    http_id = request[HTTP_REQUEST] = new_id()
    started = time.perf_counter()
    status = None
    with logs.bound(http_request=http_id, **_path_ids(request)):
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # only redirects and the like get past the JSON errors
            status = exc.status
            raise
        finally:
            _finished(request, status, (time.perf_counter() - started) * 1000)


def _path_ids(request: web.Request) -> dict[str, str]:
    """The channel and request named by the route, when they are well-formed."""
    ids = {}
    channel, request_id = request.match_info.get("channel"), request.match_info.get("request_id")
    # The patterns behind both checks end in "$", which lets one trailing newline through.
    if valid_channel_name(channel) and "\n" not in channel:
        ids["channel"] = channel
    if is_id(request_id) and "\n" not in request_id:
        ids["request_id"] = request_id
    return ids


def _finished(request: web.Request, status: int | None, duration_ms: float) -> None:
    if status is not None:
        request.app[METRICS].responded(status)
        if (
            status < 400
            and request.match_info.route.name == AUDIO_FETCH
            and not request.app[CONFIG].server.log_audio_fetches
        ):
            return
    path = request.rel_url.raw_path[:MAX_LOGGED_PATH]
    remote = client_address(request, request.app.get(TRUSTED, ())) if request.remote else "-"
    access_log.info(
        "%s %s %s %.1f ms %s",
        request.method,
        path,
        status or "-",
        duration_ms,
        remote,
        extra={
            "method": request.method,
            "path": path,
            "status": status,
            "duration_ms": round(duration_ms, 1),
            "remote": remote,
        },
    )


async def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streams and sockets included, names its request."""
    http_id = request.get(HTTP_REQUEST)
    if http_id is not None:
        response.headers["X-Request-Id"] = http_id


SERVER_LOG = logging.getLogger("aiohttp.server")  # where aiohttp reports requests it could not parse
MAX_LOGGED_PROBLEM = 200


class MalformedRequests(logging.Filter):
    """On aiohttp's server logger: a request aiohttp could not parse becomes one warning line. The
    logger is opened to DEBUG so the first-request case reaches us; everything else passes only at
    the level its parent logger would have let it through."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, RequestPayloadError):  # a body left unread whose Content-Encoding lied
            error = error.__cause__ if isinstance(error.__cause__, HttpProcessingError) else None
        if not isinstance(error, HttpProcessingError):
            return record.levelno >= logging.getLogger("aiohttp").getEffectiveLevel()
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "unknown"
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = (
            "malformed HTTP request from %s: %s: %s",
            (remote, type(error).__name__, _one_line(error.message)),
        )
        record.exc_info, record.exc_text = None, None
        record.remote = remote
        return True


def _one_line(text: object) -> str:
    """aiohttp's parser messages span lines and point at the fault with a caret: keep the words, escaped."""
    words = " ".join(line.strip() for line in str(text).splitlines() if line.strip(" ^"))
    return words.encode("unicode_escape").decode("ascii")[:MAX_LOGGED_PROBLEM]


_MALFORMED = MalformedRequests()


def quiet_malformed_requests() -> None:
    """Install the filter (once, however many apps are made)."""
    SERVER_LOG.addFilter(_MALFORMED)
    SERVER_LOG.setLevel(logging.DEBUG)
