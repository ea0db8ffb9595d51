"""Log set-up: every record carries the channel, broadcast request and HTTP request it belongs to.

The ids live in context variables. asyncio copies the current context into
every task it creates and `asyncio.to_thread` carries it into the worker
thread, so an id bound in an HTTP handler or a channel's generation job follows
everything that work does. Long-lived tasks (a channel's clock and generation
loops, the live encoders) start from `task_context()` instead, so they do not
keep the ids of whichever HTTP request happened to create them.

Two formats, chosen by `[server] log_format`: "text" for people, "json" for log
collectors (one object per line; see docs/observability.md).
"""

import contextvars
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TextIO

from broadcaster.errors import BadInput

_IDS = {
    "channel": contextvars.ContextVar("log_channel", default=None),
    "request_id": contextvars.ContextVar("log_request_id", default=None),
    "http_request": contextvars.ContextVar("log_http_request", default=None),
}
_TEXT_LABELS = {"channel": "channel", "request_id": "request", "http_request": "http"}
_STANDARD_ATTRS = {*logging.LogRecord("", 0, "", 0, "", None, None).__dict__, "message", "asctime", *_IDS}

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def bind(**ids: str | None) -> None:
    """Set ids in the current context: for the body of a task, whose context is its own."""
    for name, value in ids.items():
        _var(name).set(value)


@contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    """Set ids for the duration of a block, then put back what was there."""
    tokens = [(var, var.set(value)) for var, value in ((_var(name), value) for name, value in ids.items())]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def task_context(**ids: str | None) -> contextvars.Context:
    """A copy of the current context carrying exactly these ids (the others cleared), for create_task."""
    context = contextvars.copy_context()
    context.run(bind, **{name: ids.get(name) for name in _IDS})
    return context


def current() -> dict[str, str | None]:
    return {name: var.get() for name, var in _IDS.items()}


def _var(name: str) -> contextvars.ContextVar:
    try:
        return _IDS[name]
    except KeyError:
        raise ValueError(f"expected a log id of {sorted(_IDS)}, got {name!r}") from None


class ContextFilter(logging.Filter):
    """Stamps the ids of the current context on each record (an explicit `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _IDS.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with `[channel=… request=… http=…]` after the message when known."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        ids = " ".join(f"{_TEXT_LABELS[name]}={value}" for name in _IDS if (value := getattr(record, name, None)))
        return f"{line} [{ids}]" if ids else line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the three ids, any `extra=` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **{name: getattr(record, name, None) for name in _IDS},
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)  # ASCII only: a stray surrogate cannot break the stream


FORMATTERS = {"text": TextFormatter, "json": JsonFormatter}


def make_handler(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing `stream` (stderr by default) in the given format, with the ids stamped."""
    if log_format not in FORMATTERS:
        raise BadInput(f"expected [server] log_format 'text' or 'json', got {log_format!r}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(FORMATTERS[log_format]())
    handler.addFilter(ContextFilter())
    return handler


def configure(log_format: str, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Route every log record through one handler in this format, replacing any earlier set-up."""
    handler = make_handler(log_format, stream)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
