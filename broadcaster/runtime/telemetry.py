"""Every metric one server exports, and the small helpers that feed them.

One `Telemetry` per application: the web layer, the station, the chunk maker,
the fan-out hub and the live streams are each handed the same instance. The
list with meanings and labels is in docs/observability.md.

Two kinds of values live here. Counters and histograms are pushed as things
happen (a chunk made, bytes written, a listener dropped). Gauges that describe
the present are taken afresh at each scrape, so they can never drift from the
truth: the process's own (memory, descriptors, uptime) through functions the
registry calls as it renders, the rest (requests by state, listeners) set by
web/metrics.py just before.
"""

import gc
import os
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import accumulate

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from broadcaster.core.events import Event, RequestFailed, TimelineShifted
from broadcaster.core.model import Chunk
from broadcaster.core.states import RequestState
from broadcaster.process import sqlite_memory_used

# The classic text format (what Prometheus scrapes by default), as render() writes it.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Without this, every counter and histogram series gains a `_created` twin (when it began), a family
# /metrics never had and dashboards do not use. It is the library's switch, for the whole process.
disable_created_metrics()

# Synthesizing a sentence takes tens of milliseconds with the tone engine and up to
# tens of seconds for a long sentence with Piper on a slow machine.
CHUNK_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Queueing one broadcast for every listener takes microseconds per listener: milliseconds for thousands.
BROADCAST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
# A young collection takes a millisecond or so; a full one about a microsecond per tracked object,
# which is most of a second with thousands of listeners.
GC_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# A browser acknowledges right after a chunk ends; minutes mean a client that lags or queues acks.
ACK_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
SYNC_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
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
        self.registry = r = CollectorRegistry()  # one per app: never the library's global default
        self.requests = Gauge(
            "broadcaster_requests",
            "Playback requests in the database by channel and state (finished ones stay until cleanup purges them).",
            ("channel", "state"),
            registry=r,
        )
        self.requests_failed = Counter(
            "broadcaster_requests_failed_total",
            "Requests that failed (TTS error, storage, generation timeout).",
            ("channel",),
            registry=r,
        )
        self.chunk_seconds = Histogram(
            "broadcaster_chunk_generation_seconds",
            "Time to make one chunk: synthesis or track segment, FLAC stored, MP3 handed off.",
            ("kind",),
            buckets=CHUNK_BUCKETS_S,
            registry=r,
        )
        self.underruns = Counter(
            "broadcaster_underruns_total",
            "Chunks placed later than due because they were not ready in time (timeline_shifted).",
            ("channel",),
            registry=r,
        )
        self.underrun_seconds = Counter(
            "broadcaster_underrun_seconds_total",
            "Silence added to the timeline by underruns.",
            ("channel",),
            registry=r,
        )
        self.listeners = Gauge(
            "broadcaster_listeners",
            "Connected listeners: WebSocket listeners, producer consoles and live.mp3 players.",
            ("channel", "kind"),
            registry=r,
        )
        self.stream_bytes = Counter(
            "broadcaster_stream_bytes_total",
            "Audio bytes sent: chunk fetches, progressive streams, live.mp3.",
            ("kind",),
            registry=r,
        )
        self.ack_lag = Histogram(
            "broadcaster_ack_lag_seconds",
            "How long after the end of a chunk on the server timeline its "
            "audio_played acknowledgement arrived (early ones count as 0).",
            ("via",),
            buckets=ACK_BUCKETS_S,
            registry=r,
        )
        self.listener_ready = Histogram(
            "broadcaster_listener_ready_seconds",
            "From a chunk's placement on the timeline (its announcement) to "
            "a listener having its audio ready to play, as listeners report with their acknowledgements: the "
            "lead they needed.",
            (),
            buckets=READY_BUCKETS_S,
            registry=r,
        )
        self.output_glitches = Counter(
            "broadcaster_listener_output_glitches",
            "Output glitches (the audio output stalled or skipped) that listener pages noticed, as they report them.",
            registry=r,
        )
        self.resyncs = Counter(
            "broadcaster_listener_resyncs",
            "Crossfades listener pages made to get back on the timeline (after a glitch, or a clock estimate "
            "that stepped), as they report them.",
            registry=r,
        )
        self.buffer_moves = Counter(
            "broadcaster_listener_buffer_moves",
            "Listener pages that moved to a larger audio output buffer because their output kept glitching "
            "(more output latency, fewer underruns), as they report them.",
            registry=r,
        )
        self.sync_error = Histogram(
            "broadcaster_listener_sync_error_seconds",
            "How far from the timeline listener pages play, as they report it every few seconds.",
            buckets=SYNC_BUCKETS_S,
            registry=r,
        )
        self.lead = Gauge(
            "broadcaster_lead_seconds",
            "How far ahead of now the channel places new audio: [timeline] lead_ms, or "
            "more when its listeners report needing longer (up to max_lead_ms).",
            ("channel",),
            registry=r,
        )
        self.broadcast_seconds = Histogram(
            "broadcaster_broadcast_seconds",
            "How long one broadcast took to put its messages on the send queue of every "
            "WebSocket listener of a channel (each listener's writer task sends them after).",
            (),
            buckets=BROADCAST_BUCKETS_S,
            registry=r,
        )
        self.dropped = Counter(
            "broadcaster_slow_consumers_dropped_total",
            "Listeners disconnected for falling behind.",
            ("kind",),
            registry=r,
        )
        self.refused = Counter(
            "broadcaster_refused_total",
            "Requests and messages refused by a rate limit or cap.",
            ("reason",),
            registry=r,
        )
        self.http_responses = Counter(
            "broadcaster_http_responses_total",
            "HTTP responses by status class (a WebSocket counts as 1xx when it closes).",
            ("status_class",),
            registry=r,
        )
        self.resident_memory = Gauge(
            "broadcaster_process_resident_memory_bytes", "Resident memory of the process.", registry=r
        )
        self.open_fds = Gauge("broadcaster_process_open_fds", "Open file descriptors of the process.", registry=r)
        self.heap_blocks = Gauge(
            "broadcaster_python_heap_blocks",
            "Memory blocks the Python interpreter has allocated: steady when "
            "nothing leaks, whatever the allocator keeps in reserve (0 where PYTHONMALLOC=malloc).",
            registry=r,
        )
        self.malloc_in_use = Gauge(
            "broadcaster_malloc_in_use_bytes",
            "Memory the C library's allocator has handed out and not had back "
            "(SQLite, buffers, Python's large objects and its small-object arenas): steady when "
            "nothing leaks. 0 where the C library is not glibc 2.33 or later.",
            registry=r,
        )
        self.malloc_free = Gauge(
            "broadcaster_malloc_free_bytes",
            "Free memory the C library's allocator keeps in its heaps: part of "
            "the resident memory that is reusable, not live (fragmentation when it stays high).",
            registry=r,
        )
        self.sqlite_memory = Gauge(
            "broadcaster_sqlite_memory_bytes",
            "Memory SQLite holds (page caches and statements of all connections), by its own count.",
            registry=r,
        )
        self.chunk_cache = Gauge(
            "broadcaster_chunk_cache_bytes",
            "Chunk audio held in memory for listeners' fetches (bounded by [server] chunk_cache_mb).",
            registry=r,
        )
        self.gc_pauses = GcPauses(
            "broadcaster_gc_pause_seconds",
            "How long each run of Python's cycle collector stopped the server, by "
            "generation (2: a full collection, which walks every tracked object).",
            GC_BUCKETS_S,
        )
        r.register(self.gc_pauses)
        self.gc_frozen = Gauge(
            "broadcaster_gc_frozen_objects",
            "Objects frozen out of the cycle collector's walks once, after start-up "
            "(the modules, the voice, the channels). 0 outside `broadcaster serve`.",
            registry=r,
        )
        self.uptime = Gauge("broadcaster_uptime_seconds", "Seconds since this server started.", registry=r)
        self._read_at_scrape()
        self.synthesis_backlog = Gauge(
            "broadcaster_synthesis_backlog", "Sentences waiting for the TTS engine or being synthesized.", registry=r
        )
        self.synthesis_speed = Gauge(
            "broadcaster_synthesis_speed_ratio",
            "Measured TTS speed per worker: seconds of audio per second of synthesis (0 until measured).",
            registry=r,
        )
        self.streaming = Gauge(
            "broadcaster_streaming_requests",
            "Narrations on the air while still being synthesized, and how many "
            "the engine's measured speed allows at once (more wait until fully made).",
            ("limit",),
            registry=r,
        )
        self.decodes = Gauge(
            "broadcaster_track_decodes",
            "Music files being decoded into tracks, and uploads waiting for a decoder ([music] max_decodes at once).",
            ("state",),
            registry=r,
        )
        self._cluster_metrics(r)
        self._zero_known_labels()

    def _cluster_metrics(self, r: CollectorRegistry) -> None:
        self.channels_run = Gauge(
            "broadcaster_channels_run",
            "Channels whose clock this process runs: every channel outside a cluster, its share in one.",
            registry=r,
        )
        self.announcements_waiting = Gauge(
            "broadcaster_cluster_announcements_waiting",
            "Steps announced by channels run here that Redis has not taken yet (grows while it is away).",
            registry=r,
        )
        self.forwarded = Counter(
            "broadcaster_cluster_forwarded_requests",
            "Requests passed on to the process that runs their channel.",
            registry=r,
        )
        self.ownership_changes = Counter(
            "broadcaster_cluster_ownership_changes",
            "Channels this process began (gained) or stopped (lost) running.",
            ("change",),
            registry=r,
        )
        self.feed_resets = Counter(
            "broadcaster_cluster_feed_resets",
            "Times a channel's event feed here could not continue and its listeners were resynchronised.",
            ("reason",),
            registry=r,
        )
        self.bus_reconnects = Counter(
            "broadcaster_cluster_bus_reconnects", "Times this process reconnected to Redis.", registry=r
        )

    def _read_at_scrape(self) -> None:
        """Gauges the library reads through a function each time it renders."""
        started = time.monotonic()
        self.uptime.set_function(lambda: time.monotonic() - started)
        self.resident_memory.set_function(resident_memory_bytes)
        self.open_fds.set_function(open_fds)
        self.heap_blocks.set_function(sys.getallocatedblocks)
        if sqlite_memory_used is not None:
            self.sqlite_memory.set_function(sqlite_memory_used)

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
        for change in ("gained", "lost"):
            self.ownership_changes.labels(change=change)
        for reason in ("fresh", "behind", "lost"):
            self.feed_resets.labels(reason=reason)

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

    def listener_synced(self, glitches: int, crossfades: int, buffer_moves: int, error_ms: float) -> None:
        self.output_glitches.inc(glitches)
        self.resyncs.inc(crossfades)
        self.buffer_moves.inc(buffer_moves)
        self.sync_error.observe(abs(error_ms) / 1000)

    def gc_paused(self, generation: int, seconds: float) -> None:
        self.gc_pauses.observe(generation, seconds)

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
        """Every metric in the text format of CONTENT_TYPE."""
        return generate_latest(self.registry).decode()


class GcPauses:
    """A histogram of collector pauses by generation, kept in plain lists and read by the registry
    at each scrape.

    Pauses are observed from inside `gc.callbacks`, which run wherever an allocation sets off a
    collection, even while this thread holds one of prometheus_client's (non-reentrant) locks for
    a scrape or a new series. Observing into one of its metrics there could wait on that lock
    forever (prometheus/client_python#322). These lists take no lock. Collections never overlap, so
    neither do observations; a scrape that reads during one may be one pause behind in the sum.
    """

    def __init__(self, name: str, help_text: str, bounds: tuple[float, ...]):
        self.name, self.help, self.bounds = name, help_text, bounds
        self._les = [*(floatToGoString(bound) for bound in bounds), "+Inf"]
        # per generation: how many in each bucket (not cumulative; the last is above every bound), and the sum
        self._counts = {generation: [0] * (len(bounds) + 1) for generation in range(3)}
        self._sums = dict.fromkeys(range(3), 0.0)

    def observe(self, generation: int, seconds: float) -> None:
        self._counts[generation][bisect_left(self.bounds, seconds)] += 1  # inclusive bounds: le
        self._sums[generation] += seconds

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.help, labels=["generation"])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.help, labels=["generation"])
        for generation, counts in self._counts.items():
            cumulative = list(accumulate(counts))
            family.add_metric([str(generation)], list(zip(self._les, cumulative)), self._sums[generation])
        yield family


class PauseTimer:
    """Times each run of the cycle collector through `gc.callbacks`, which stops the whole server
    (the collecting thread holds the GIL throughout). Collections never overlap, so one start time
    is enough."""

    def __init__(self, observe: Callable[[int, float], None]):
        self.observe = observe  # (generation, seconds) of one finished collection
        self._started: float | None = None

    def start(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._started = now
        elif self._started is not None:
            self.observe(info["generation"], now - self._started)
            self._started = None


def resident_memory_bytes() -> int:
    """From /proc/self/statm; 0 where there is no /proc."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def open_fds() -> int:
    """From /proc/self/fd; 0 where there is no /proc."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
