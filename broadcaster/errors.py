"""One exception tree for the whole project.

    BroadcasterError
    ├── InvalidTransition      our bug: the state machine was asked for an illegal move
    ├── GenerationError        audio could not be produced (TTS or encoder failure)
    └── BadInput               their mistake: carries the HTTP status to answer with
        ├── NotFound           404
        ├── Unauthorized       401
        ├── Conflict           409
        ├── PayloadTooLarge    413
        └── RateLimited        429, with the seconds to wait
            └── ServerStopping 503: the server began shutting down; try again once it is back

Messages say what was expected and what came, so they can be shown to a user as is.
"""


class BroadcasterError(Exception):
    """Root of every error this project raises on purpose."""


class InvalidTransition(BroadcasterError):
    """A state change the transition table does not allow."""

    def __init__(self, kind: str, state: str, event: str):
        super().__init__(f"{kind} is {state}; it cannot take event {event!r}")
        self.kind = kind
        self.state = state
        self.event = event


class GenerationError(BroadcasterError):
    """The TTS engine or the encoder failed to produce a chunk."""


class BadInput(BroadcasterError):
    """A client sent something we refuse; `status` is the HTTP answer."""

    status: int = 400
    code: str = "bad_request"
    retry_after_s: int | None = None  # sent as Retry-After when set

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(BadInput):
    status = 404
    code = "not_found"


class Unauthorized(BadInput):
    status = 401
    code = "unauthorized"


class Conflict(BadInput):
    """The request is fine but the thing it names is in the wrong state for it."""

    status = 409
    code = "conflict"


class PayloadTooLarge(BadInput):
    status = 413
    code = "too_large"


class RateLimited(BadInput):
    """Too much, too fast: the client may try again after `retry_after_s`."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)


class ServerStopping(RateLimited):
    status = 503
    code = "server_stopping"
