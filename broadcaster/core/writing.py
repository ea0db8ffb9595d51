"""Open narrations: text that arrives while it is being spoken (a language model writing a reply).

The station splits what is appended into the sentences more text cannot change and an unfinished
tail (tts/sentences.py `split_complete`); the core only keeps them. A tail left alone for
`open_idle_flush_ms` is spoken as it is; a narration left alone for `open_idle_timeout_ms` is closed
with what it has. Both count from the latest append, as the generation timeout does while open.
"""

from .model import Request, Writing
from .timeline import TimelineConfig


def appended(
    request: Request, text: str, sentences: list[str], tail: str, tail_sentences: list[str], now_ms: int
) -> None:
    """Take an append into an open request (the caller checked that it is open)."""
    request.text += text
    request.sentences += sentences
    request.writing = Writing(tail, tuple(tail_sentences), now_ms)


def close(request: Request) -> None:
    """No more text: the tail is spoken as it is."""
    assert request.writing is not None
    request.sentences += request.writing.tail_sentences
    request.writing = None


def flush(request: Request) -> bool:
    """Speak the unfinished tail as it is; whatever comes next starts a new sentence."""
    writing = request.writing
    if writing is None or not writing.tail_sentences:
        return False
    request.sentences += writing.tail_sentences
    request.writing = Writing("", (), writing.appended_at_ms)
    return True


def flush_due_ms(request: Request, config: TimelineConfig) -> int | None:
    writing = request.writing
    if writing is None or not writing.tail_sentences:
        return None
    return writing.appended_at_ms + config.open_idle_flush_ms


def close_due_ms(request: Request, config: TimelineConfig) -> int | None:
    return None if request.writing is None else request.writing.appended_at_ms + config.open_idle_timeout_ms
