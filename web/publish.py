"""From a channel's committed steps to listener messages, with progress-only updates paced.

Every step's events become messages, published once on the event bus
(web/feed.py takes them from there to every process's listeners). Most steps are news a listener must act on: a
request queued, a stream starting, a chunk scheduled. Some only report
progress: synthesis of a request began, or a sentence was made ahead of its
time. Those carry nothing but a fresh queue view, and with thousands of
listeners every broadcast costs tens of milliseconds of the server's time,
so they wait PROGRESS_DELAY_S: if another step is announced meanwhile, it
carries the fresh queue view instead (a request that starts generating
usually has its first chunk ready within that time), and otherwise the queue
view goes out alone when the delay is up, unless it is the view listeners
have already: audio made ahead for a request deeper in a long queue than
the view lists (web/messages.py, QUEUE_LISTED) changes nothing they see.
"""

import asyncio
from collections.abc import Callable
from typing import Any

from broadcaster.core.events import Event, QueueChanged
from broadcaster.runtime.runner import ChannelRunner

from .messages import event_json

PROGRESS_DELAY_S = 0.25

Announce = Callable[[ChannelRunner, list[dict[str, Any]]], None]  # one step's messages, onto the bus


def progress_only(events: list[Event]) -> bool:
    return bool(events) and all(isinstance(event, QueueChanged) and event.progress for event in events)


class Publisher:
    def __init__(self, announce: Announce, runners: Callable[[], dict[str, ChannelRunner]]):
        self.announce = announce
        self.runners = runners
        self._due: dict[str, object] = {}  # channel -> token of the queue view it still owes its listeners
        self._shown: dict[str, dict[str, Any]] = {}  # channel -> the queue view it announced last
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    def __call__(self, channel: str, events: list[Event]) -> None:
        runner = self.runners().get(channel)
        if runner is None:
            return  # still loading: listeners get a snapshot when they connect
        if progress_only(events):
            if channel not in self._due:
                token = self._due[channel] = object()
                asyncio.get_running_loop().call_later(PROGRESS_DELAY_S, self._flush_later, runner, token)
            return
        if self._due.pop(channel, None) is not None:
            events = [*events, QueueChanged()]  # the owed view rides along
        self._broadcast(runner, events)

    def _broadcast(self, runner: ChannelRunner, events: list[Event]) -> None:
        queue_sent = False
        messages = []
        for event in events:
            if isinstance(event, QueueChanged):
                if queue_sent:
                    continue  # one queue update per step is enough
                queue_sent = True
            message = event_json(event, runner.channel)
            if message is not None:
                messages.append(message)
            if isinstance(event, QueueChanged) and message is not None:
                self._shown[runner.name] = message
        if messages:
            self.announce(runner, messages)  # one batch: a listener gets the whole step in one write

    def _flush_later(self, runner: ChannelRunner, token: object) -> None:
        if self._closed:
            return
        task = asyncio.create_task(self._flush(runner, token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, runner: ChannelRunner, token: object) -> None:
        async with runner.saved:  # between steps: the view shows saved state only
            if self._due.get(runner.name) is not token:
                return  # a step announced it meanwhile
            del self._due[runner.name]
            view = event_json(QueueChanged(), runner.channel)
            if view != self._shown.get(runner.name):
                self._shown[runner.name] = view
                self.announce(runner, [view])

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
