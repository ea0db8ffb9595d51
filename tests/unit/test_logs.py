"""Log records carry the ids of their context, in text and JSON."""

import asyncio
import io
import json
import logging

import pytest

from broadcaster import logs
from broadcaster.errors import BadInput


@pytest.fixture
def capture():
    """A logger whose records go through a handler of the given format into a string."""
    handlers = []
    logger = logging.getLogger("test.logs")
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def start(log_format: str) -> io.StringIO:
        stream = io.StringIO()
        handler = logs.make_handler(log_format, stream)
        logger.addHandler(handler)
        handlers.append(handler)
        return stream

    yield logger, start
    for handler in handlers:
        logger.removeHandler(handler)
    logger.propagate = True


def test_json_line_has_the_fields_and_the_bound_ids(capture):
    """A JSON line parses and holds ts, level, logger, msg, the ids bound around it, and extra fields."""
    logger, start = capture
    stream = start("json")
    with logs.bound(channel="lobby", request_id="4d68ca08bdd6a3eb"):
        logger.info("generating %s", "now", extra={"status": 200})
    entry = json.loads(stream.getvalue())
    assert entry["ts"].endswith("Z") and entry["ts"][10] == "T"
    assert (entry["level"], entry["logger"], entry["msg"]) == ("INFO", "test.logs", "generating now")
    assert (entry["channel"], entry["request_id"], entry["http_request"]) == ("lobby", "4d68ca08bdd6a3eb", None)
    assert entry["status"] == 200
    assert "exc" not in entry


def test_json_line_carries_the_traceback(capture):
    """An exception logged in JSON arrives as one line with its traceback under "exc"."""
    logger, start = capture
    stream = start("json")
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        logger.exception("could not save")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["msg"] == "could not save"
    assert "RuntimeError: disk on fire" in entry["exc"]


def test_text_line_names_the_ids_only_when_known(capture):
    """Text lines end with [channel=… request=…] inside a bound block and have no suffix outside it."""
    logger, start = capture
    stream = start("text")
    with logs.bound(channel="lobby", request_id="4d68ca08bdd6a3eb"):
        logger.warning("slow")
    logger.warning("plain")
    first, second = stream.getvalue().splitlines()
    assert first.endswith("WARNING test.logs: slow [channel=lobby request=4d68ca08bdd6a3eb]")
    assert second.endswith("WARNING test.logs: plain")


def test_bound_restores_what_was_there():
    """Leaving a bound block puts back the outer ids."""
    with logs.bound(channel="outer"):
        with logs.bound(channel="inner", http_request="abc"):
            assert logs.current() == {"channel": "inner", "request_id": None, "http_request": "abc"}
        assert logs.current() == {"channel": "outer", "request_id": None, "http_request": None}
    assert logs.current()["channel"] is None


async def test_task_context_drops_the_creators_http_request():
    """A task started from task_context() keeps only the ids given, not the HTTP request that started it."""
    seen = {}

    async def look(name: str) -> None:
        seen[name] = logs.current()

    with logs.bound(http_request="from-http", channel="lobby"):
        await asyncio.create_task(look("fresh"), context=logs.task_context(channel="radio"))
        await asyncio.create_task(look("copied"))
    assert seen["fresh"] == {"channel": "radio", "request_id": None, "http_request": None}
    assert seen["copied"] == {"channel": "lobby", "request_id": None, "http_request": "from-http"}


def test_unknown_format_is_refused_with_the_choices():
    """A log_format other than text or json is a config error naming both."""
    with pytest.raises(BadInput, match="'text' or 'json', got 'xml'"):
        logs.make_handler("xml")


def test_unknown_id_name_is_refused():
    """Binding an id the records do not carry is a bug, reported with the known names."""
    with pytest.raises(ValueError, match="expected a log id of"):
        logs.bind(user="x")
