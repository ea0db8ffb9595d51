"""Every metric one server exports, and the small helpers that feed them.

One `Telemetry` per application: the web layer, the station, the chunk maker,
the fan-out hub and the live streams are each handed the same instance. The
list with meanings and labels is in docs/observability.md.

Two kinds of values live here. Counters and histograms are pushed as things
happen (a chunk made, bytes written, a listener dropped). Gauges that describe
the present (requests by state, listeners, memory) are taken afresh at each
scrape by web/metrics.py, so they can never drift from the truth.
"""

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping

from broadcaster.core.events import Event, RequestFailed, TimelineShifted
from broadcaster.core.model import Chunk
from broadcaster.core.states import RequestState
from broadcaster.metrics import Registry
from broadcaster.process import sqlite_memory_used

# Synthesizing a sentence takes tens of milliseconds with the tone engine and up to
# tens of seconds for a long sentence with Piper on a slow machine.
CHUNK_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# One broadcast takes about 10 microseconds per listener: milliseconds for hundreds, 0.1 s for thousands.
BROADCAST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
# A browser acknowledges right after a chunk ends; minutes mean a client that lags or queues acks.
# A young collection takes a millisecond or so; a full one about a microsecond per tracked object,
# which is most of a second with thousands of listeners.
GC_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
ACK_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# From a chunk going on the air to a listener having it ready: tenths of a second for a few
# listeners, seconds for a thousand fetching the same chunk at once; capped by max_lead_ms.
READY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)

STREAM_KINDS = ("chunk", "progressive", "live")
CHUNK_KINDS = ("speech", "track")
ACK_VIAS = ("ws", "http")
CONSUMER_KINDS = ("websocket", "live")
LISTENER_KINDS = ("websocket", "console", "live")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

Publish = Callable[[str, list[Event]], None]


class Telemetry:
    def __init__(self) -> None:
        self.registry = r = Registry()
        self._started = time.monotonic()
        self.requests = r.gauge(
            "broadcaster_requests",
            "Playback requests in the database by channel and state (finished ones stay until cleanup purges them).",
            ("channel", "state"),
        )
        self.requests_failed = r.counter(
            "broadcaster_requests_failed_total",
            "Requests that failed (TTS error, storage, generation timeout).",
            ("channel",),
        )
        self.chunk_seconds = r.histogram(
            "broadcaster_chunk_generation_seconds",
            "Time to make one chunk: synthesis or track segment, FLAC stored, MP3 handed off.",
            ("kind",),
            CHUNK_BUCKETS_S,
        )
        self.underruns = r.counter(
            "broadcaster_underruns_total",
            "Chunks placed later than due because they were not ready in time (timeline_shifted).",
            ("channel",),
        )
        self.underrun_seconds = r.counter(
            "broadcaster_underrun_seconds_total", "Silence added to the timeline by underruns.", ("channel",)
        )
        self.listeners = r.gauge(
            "broadcaster_listeners",
            "Connected listeners: WebSocket listeners, producer consoles and live.mp3 players.",
            ("channel", "kind"),
        )
        self.stream_bytes = r.counter(
            "broadcaster_stream_bytes_total",
            "Audio bytes sent: chunk fetches, progressive streams, live.mp3.",
            ("kind",),
        )
        self.ack_lag = r.histogram(
            "broadcaster_ack_lag_seconds",
            "How long after the end of a chunk on the server timeline its "
            "audio_played acknowledgement arrived (early ones count as 0).",
            ("via",),
            ACK_BUCKETS_S,
        )
        self.listener_ready = r.histogram(
            "broadcaster_listener_ready_seconds",
            "From a chunk's placement on the timeline (its announcement) to "
            "a listener having its audio ready to play, as listeners report with their acknowledgements: the "
            "lead they needed.",
            (),
            READY_BUCKETS_S,
        )
        self.lead = r.gauge(
            "broadcaster_lead_seconds",
            "How far ahead of now the channel places new audio: [timeline] lead_ms, or "
            "more when its listeners report needing longer (up to max_lead_ms).",
            ("channel",),
        )
        self.broadcast_seconds = r.histogram(
            "broadcaster_broadcast_seconds",
            "How long one broadcast took to hand its messages to every WebSocket "
            "listener of a channel (written to the socket, or queued behind a backlog).",
            (),
            BROADCAST_BUCKETS_S,
        )
        self.dropped = r.counter(
            "broadcaster_slow_consumers_dropped_total", "Listeners disconnected for falling behind.", ("kind",)
        )
        self.refused = r.counter(
            "broadcaster_refused_total", "Requests and messages refused by a rate limit or cap.", ("reason",)
        )
        self.http_responses = r.counter(
            "broadcaster_http_responses_total",
            "HTTP responses by status class (a WebSocket counts as 1xx when it closes).",
            ("status_class",),
        )
        self.resident_memory = r.gauge("broadcaster_process_resident_memory_bytes", "Resident memory of the process.")
        self.open_fds = r.gauge("broadcaster_process_open_fds", "Open file descriptors of the process.")
        self.heap_blocks = r.gauge(
            "broadcaster_python_heap_blocks",
            "Memory blocks the Python interpreter has allocated: steady when "
            "nothing leaks, whatever the allocator keeps in reserve (counted by pymalloc only: 0 under "
            '[server] allocator = "malloc").',
        )
        self.malloc_in_use = r.gauge(
            "broadcaster_malloc_in_use_bytes",
            "Memory the C library's allocator has handed out and not had back "
            '(Python\'s objects under the default [server] allocator = "malloc", SQLite, buffers): steady when '
            "nothing leaks. 0 where the C library is not glibc 2.33 or later.",
        )
        self.malloc_free = r.gauge(
            "broadcaster_malloc_free_bytes",
            "Free memory the C library's allocator keeps in its heaps: part of "
            "the resident memory that is reusable, not live (fragmentation when it stays high).",
        )
        self.sqlite_memory = r.gauge(
            "broadcaster_sqlite_memory_bytes",
            "Memory SQLite holds (page caches and statements of all connections), by its own count.",
        )
        self.chunk_cache = r.gauge(
            "broadcaster_chunk_cache_bytes",
            "Chunk audio held in memory for listeners' fetches (bounded by [server] chunk_cache_mb).",
        )
        self.fanout_helpers = r.gauge(
            "broadcaster_fanout_helpers",
            "Helper processes writing large broadcasts (they start with the first broadcast to 1024 or more sockets).",
        )
        self.fanout_helper_failures = r.counter(
            "broadcaster_fanout_helper_failures_total",
            "Fan-out helper processes that failed and were stopped; "
            "the listeners they were writing to at the time were closed with 1011 and reconnect.",
        )
        self.gc_pause_seconds = r.histogram(
            "broadcaster_gc_pause_seconds",
            "How long each run of Python's cycle collector stopped the server, by "
            "generation (2: a full collection, which walks every tracked object).",
            ("generation",),
            GC_BUCKETS_S,
        )
        self.gc_frozen = r.gauge(
            "broadcaster_gc_frozen_objects",
            "Objects frozen out of the cycle collector's walks, as last counted: at "
            "start-up and at each walk of them all (counting visits every one, so it is done only then). 0 when "
            '[server] gc_freeze is "off", or outside `broadcaster serve`.',
        )
        self.uptime = r.gauge("broadcaster_uptime_seconds", "Seconds since this server started.")
        self.synthesis_backlog = r.gauge(
            "broadcaster_synthesis_backlog", "Sentences waiting for the TTS engine or being synthesized."
        )
        self.synthesis_speed = r.gauge(
            "broadcaster_synthesis_speed_ratio",
            "Measured TTS speed per worker: seconds of audio per second of synthesis (0 until measured).",
        )
        self.streaming = r.gauge(
            "broadcaster_streaming_requests",
            "Narrations on the air while still being synthesized, and how many "
            "the engine's measured speed allows at once (more wait until fully made).",
            ("limit",),
        )
        self.decodes = r.gauge(
            "broadcaster_track_decodes",
            "Music files being decoded into tracks, and uploads waiting for a decoder ([music] max_decodes at once).",
            ("state",),
        )
        self._zero_known_labels()

    def _zero_known_labels(self) -> None:
        """Series that always exist, so a rate over them starts at the first scrape, not the first event."""
        for kind in STREAM_KINDS:
            self.stream_bytes.labels(kind=kind)
        for kind in CHUNK_KINDS:
            self.chunk_seconds.labels(kind=kind)
        for via in ACK_VIAS:
            self.ack_lag.labels(via=via)
        for kind in CONSUMER_KINDS:
            self.dropped.labels(kind=kind)
        for status_class in STATUS_CLASSES:
            self.http_responses.labels(status_class=status_class)
        for generation in range(3):
            self.gc_pause_seconds.labels(generation=str(generation))

    # -- pushed as things happen -------------------------------------------------------

    def observing(self, publish: Publish) -> Publish:
        """Wrap a channel publisher so that every committed step's events are counted first."""

        def count_and_publish(channel: str, events: list[Event]) -> None:
            self.count_events(channel, events)
            publish(channel, events)

        return count_and_publish

    def count_events(self, channel: str, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, RequestFailed):
                self.requests_failed.labels(channel=channel).inc()
            elif isinstance(event, TimelineShifted):
                self.underruns.labels(channel=channel).inc()
                self.underrun_seconds.labels(channel=channel).inc(event.shift_ms / 1000)

    def chunk_made(self, kind: str, seconds: float) -> None:
        self.chunk_seconds.labels(kind=kind).observe(seconds)

    def sent(self, kind: str, size: int) -> None:
        self.stream_bytes.labels(kind=kind).inc(size)

    def acknowledged(self, chunk: Chunk, received_ms: int, via: str) -> None:
        """An audio_played arrived; chunks that never had a place on the timeline have no lag."""
        if chunk.starts_at_ms is None:
            return
        lag_ms = received_ms - (chunk.starts_at_ms + chunk.duration_ms)
        self.ack_lag.labels(via=via).observe(max(0, lag_ms) / 1000)

    def listener_needed(self, need_ms: int) -> None:
        self.listener_ready.observe(need_ms / 1000)

    def gc_paused(self, generation: int, seconds: float) -> None:
        self.gc_pause_seconds.labels(generation=str(generation)).observe(seconds)

    def broadcast_took(self, seconds: float) -> None:
        self.broadcast_seconds.observe(seconds)

    def dropped_consumer(self, kind: str) -> None:
        self.dropped.labels(kind=kind).inc()

    def responded(self, status: int) -> None:
        self.http_responses.labels(status_class=f"{status // 100}xx").inc()

    # -- taken at each scrape -----------------------------------------------------------

    def set_request_counts(self, counts: Mapping[tuple[str, str], int], channels: Iterable[str]) -> None:
        """Counts by (channel, state); every state of every channel is shown, 0 when there is none."""
        self.requests.clear()
        for channel in {*channels, *(name for name, _ in counts)}:
            for state in RequestState:
                self.requests.labels(channel=channel, state=state.value).set(counts.get((channel, state.value), 0))

    def set_synthesis(self, backlog: int, speed: float | None, streaming: int, capacity: int) -> None:
        self.synthesis_backlog.set(backlog)
        self.synthesis_speed.set(speed or 0)
        self.streaming.labels(limit="now").set(streaming)
        self.streaming.labels(limit="allowed").set(capacity)

    def set_leads(self, leads: Mapping[str, int]) -> None:
        """Each loaded channel's lead now, in ms."""
        self.lead.clear()
        for channel, lead_ms in leads.items():
            self.lead.labels(channel=channel).set(lead_ms / 1000)

    def set_chunk_cache(self, size: int) -> None:
        self.chunk_cache.set(size)

    def set_malloc(self, usage: tuple[int, int] | None) -> None:
        """From process.malloc_usage(), taken off the event loop (it can take milliseconds)."""
        if usage is not None:
            self.malloc_in_use.set(usage[0])
            self.malloc_free.set(usage[1])

    def set_decodes(self, running: int, waiting: int) -> None:
        self.decodes.labels(state="running").set(running)
        self.decodes.labels(state="waiting").set(waiting)

    def set_fanout_helpers(self, running: int) -> None:
        self.fanout_helpers.set(running)

    def set_listeners(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Counts by (channel, kind), replacing the last scrape's."""
        self.listeners.clear()
        for (channel, kind), count in counts.items():
            self.listeners.labels(channel=channel, kind=kind).set(count)

    def know_channels(self, channels: Iterable[str]) -> None:
        """Give each loaded channel its per-channel counters at 0 before its first event."""
        for channel in channels:
            self.requests_failed.labels(channel=channel)
            self.underruns.labels(channel=channel)
            self.underrun_seconds.labels(channel=channel)

    def render(self) -> str:
        self.uptime.set(time.monotonic() - self._started)
        stats = process_stats()
        if stats is not None:
            self.resident_memory.set(stats[0])
            self.open_fds.set(stats[1])
        self.heap_blocks.set(sys.getallocatedblocks())
        if sqlite_memory_used is not None:
            self.sqlite_memory.set(sqlite_memory_used())
        return self.registry.render()


def process_stats() -> tuple[int, int] | None:
    """Resident memory in bytes and open file descriptors, from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE"), fds
