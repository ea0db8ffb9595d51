"""The metric primitives and their Prometheus text exposition."""

import math
import re

import pytest

from broadcaster.core.model import Chunk
from broadcaster.metrics import Registry
from broadcaster.runtime.telemetry import Telemetry


def test_small_registry_renders_exactly():
    """HELP and TYPE lines, sorted children, escaped labels and cumulative buckets come out exactly."""
    registry = Registry()
    sent = registry.counter("demo_bytes_total", "Bytes sent.\nBy kind.", ("kind",))
    sent.labels(kind="live").inc(1024)
    sent.labels(kind="chunk").inc(3)
    sent.labels(kind="chunk").inc(0.5)
    mood = registry.gauge("demo_mood", "Back\\slash.", ("channel",))
    mood.labels('say "hi"\\\n').set(-2)
    up = registry.gauge("demo_up", "Whether it is up.")
    up.set(1)
    lag = registry.histogram("demo_lag_seconds", "Lag.", ("via",), buckets=(0.1, 1, 2.5))
    for value in (0.05, 0.1, 0.7, 3, 12):
        lag.labels(via="ws").observe(value)
    assert registry.render() == (
        "# HELP demo_bytes_total Bytes sent.\\nBy kind.\n"
        "# TYPE demo_bytes_total counter\n"
        'demo_bytes_total{kind="chunk"} 3.5\n'
        'demo_bytes_total{kind="live"} 1024\n'
        "# HELP demo_mood Back\\\\slash.\n"
        "# TYPE demo_mood gauge\n"
        'demo_mood{channel="say \\"hi\\"\\\\\\n"} -2\n'
        "# HELP demo_up Whether it is up.\n"
        "# TYPE demo_up gauge\n"
        "demo_up 1\n"
        "# HELP demo_lag_seconds Lag.\n"
        "# TYPE demo_lag_seconds histogram\n"
        'demo_lag_seconds_bucket{via="ws",le="0.1"} 2\n'
        'demo_lag_seconds_bucket{via="ws",le="1"} 3\n'
        'demo_lag_seconds_bucket{via="ws",le="2.5"} 3\n'
        'demo_lag_seconds_bucket{via="ws",le="+Inf"} 5\n'
        'demo_lag_seconds_sum{via="ws"} 15.85\n'
        'demo_lag_seconds_count{via="ws"} 5\n'
    )


def test_family_without_children_renders_only_help_and_type():
    """A labelled metric nobody touched yet still announces itself, with no samples."""
    registry = Registry()
    registry.counter("demo_total", "Nothing yet.", ("channel",))
    assert registry.render() == "# HELP demo_total Nothing yet.\n# TYPE demo_total counter\n"


def test_special_values_use_prometheus_spelling():
    """NaN and the infinities are written the way Prometheus parses them."""
    registry = Registry()
    gauge = registry.gauge("demo", "d.", ("case",))
    gauge.labels("nan").set(math.nan)
    gauge.labels("neg").set(-math.inf)
    gauge.labels("pos").set(math.inf)
    lines = registry.render().splitlines()[2:]
    assert lines == ['demo{case="nan"} NaN', 'demo{case="neg"} -Inf', 'demo{case="pos"} +Inf']


def test_counter_refuses_to_go_down():
    """A negative increment is a bug in the caller and says so."""
    counter = Registry().counter("demo_total", "d.")
    with pytest.raises(ValueError, match="0 or more, got -1"):
        counter.inc(-1)


@pytest.mark.parametrize("labels", [{}, {"kind": "x", "extra": "y"}, {"other": "x"}])
def test_wrong_labels_are_named_in_the_error(labels):
    """Label names that do not match the metric's are refused with what was expected."""
    counter = Registry().counter("demo_total", "d.", ("kind",))
    with pytest.raises(ValueError, match=r"expected .*labels? .*\['kind'\] for demo_total, got"):
        counter.labels(**labels)


def test_labelled_metric_needs_a_child_first():
    """Calling inc on a labelled family (instead of a child) is refused."""
    counter = Registry().counter("demo_total", "d.", ("kind",))
    with pytest.raises(ValueError, match="pick a child"):
        counter.inc()


@pytest.mark.parametrize("buckets", [(), (1, 1), (2, 1), (1, math.nan)])
def test_histogram_buckets_must_increase(buckets):
    """Empty, repeated, unordered or NaN bucket bounds are refused."""
    with pytest.raises(ValueError, match="strictly increasing"):
        Registry().histogram("demo_seconds", "d.", buckets=buckets)


def test_names_are_checked_and_unique():
    """Bad metric or label names, the reserved 'le', and duplicates are refused."""
    registry = Registry()
    registry.counter("demo_total", "d.")
    with pytest.raises(ValueError, match="already registered"):
        registry.gauge("demo_total", "d.")
    with pytest.raises(ValueError, match="metric name"):
        registry.gauge("2bad", "d.")
    with pytest.raises(ValueError, match="label names"):
        registry.gauge("demo_two", "d.", ("__reserved",))
    with pytest.raises(ValueError, match="'le'"):
        registry.histogram("demo_seconds", "d.", ("le",), buckets=(1,))


def test_clear_forgets_children_taken_at_scrape_time():
    """After clear() a channel that went away no longer appears."""
    registry = Registry()
    gauge = registry.gauge("demo", "d.", ("channel",))
    gauge.labels("gone").set(3)
    gauge.clear()
    gauge.labels("here").set(1)
    assert registry.render().splitlines()[2:] == ['demo{channel="here"} 1']


def _chunk(starts_at_ms: int | None) -> Chunk:
    return Chunk(
        chunk_id="0" * 16,
        request_id="1" * 16,
        seq=0,
        text="Hi.",
        duration_ms=1000,
        ready_at_ms=0,
        starts_at_ms=starts_at_ms,
        sample_rate=22050,
        samples=22050,
    )


def test_ack_lag_is_measured_from_the_chunk_end_and_early_acks_count_as_zero():
    """An ack 250 ms after the chunk's end observes 0.25 s; one before the end observes 0; an unplaced chunk nothing."""
    telemetry = Telemetry()
    telemetry.acknowledged(_chunk(10_000), 11_250, "ws")
    telemetry.acknowledged(_chunk(10_000), 10_500, "ws")
    telemetry.acknowledged(_chunk(None), 99_000, "ws")
    child = telemetry.ack_lag.labels(via="ws")
    assert (child.count, child.sum) == (2, 0.25)


def test_known_label_values_start_at_zero():
    """Byte, drop and status-class counters exist at 0 before anything happens."""
    text = Telemetry().render()
    assert 'broadcaster_stream_bytes_total{kind="progressive"} 0' in text
    assert 'broadcaster_slow_consumers_dropped_total{kind="live"} 0' in text
    assert 'broadcaster_http_responses_total{status_class="5xx"} 0' in text


# Every family /metrics exports: its type and label names. A dashboard or alert built on one of them
# breaks if it goes away or changes shape, so a change here must be a decision, not an accident.
EXPORTED = {
    "broadcaster_requests": ("gauge", {"channel", "state"}),
    "broadcaster_requests_failed_total": ("counter", {"channel"}),
    "broadcaster_chunk_generation_seconds": ("histogram", {"kind"}),
    "broadcaster_underruns_total": ("counter", {"channel"}),
    "broadcaster_underrun_seconds_total": ("counter", {"channel"}),
    "broadcaster_listeners": ("gauge", {"channel", "kind"}),
    "broadcaster_stream_bytes_total": ("counter", {"kind"}),
    "broadcaster_ack_lag_seconds": ("histogram", {"via"}),
    "broadcaster_listener_ready_seconds": ("histogram", set()),
    "broadcaster_lead_seconds": ("gauge", {"channel"}),
    "broadcaster_broadcast_seconds": ("histogram", set()),
    "broadcaster_slow_consumers_dropped_total": ("counter", {"kind"}),
    "broadcaster_refused_total": ("counter", {"reason"}),
    "broadcaster_http_responses_total": ("counter", {"status_class"}),
    "broadcaster_process_resident_memory_bytes": ("gauge", set()),
    "broadcaster_process_open_fds": ("gauge", set()),
    "broadcaster_python_heap_blocks": ("gauge", set()),
    "broadcaster_malloc_in_use_bytes": ("gauge", set()),
    "broadcaster_malloc_free_bytes": ("gauge", set()),
    "broadcaster_sqlite_memory_bytes": ("gauge", set()),
    "broadcaster_chunk_cache_bytes": ("gauge", set()),
    "broadcaster_fanout_helpers": ("gauge", set()),
    "broadcaster_fanout_helper_failures_total": ("counter", set()),
    "broadcaster_gc_pause_seconds": ("histogram", {"generation"}),
    "broadcaster_gc_frozen_objects": ("gauge", set()),
    "broadcaster_uptime_seconds": ("gauge", set()),
    "broadcaster_synthesis_backlog": ("gauge", set()),
    "broadcaster_synthesis_speed_ratio": ("gauge", set()),
    "broadcaster_streaming_requests": ("gauge", {"limit"}),
    "broadcaster_track_decodes": ("gauge", {"state"}),
}

SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def exported_families(text: str) -> dict[str, tuple[str, set[str]]]:
    """Family name -> (type, label names seen on its samples, le aside); each sample must belong to a family."""
    families: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            families[name] = (kind, set())
        elif line and not line.startswith("#"):
            name, labels = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+", line).groups()
            owner = next((f for f in families if name in (f + s for s in SUFFIXES[families[f][0]])), None)
            assert owner is not None, f"expected every sample under a TYPE line of its own family, got {name}"
            families[owner][1].update(set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', labels or "")) - {"le"})
    return families


def every_series_touched() -> Telemetry:
    """A Telemetry where every family has at least one series, so each shows its labels."""
    telemetry = Telemetry()
    telemetry.set_request_counts({("lobby", "pending"): 2}, ["lobby"])
    telemetry.set_listeners({("lobby", "websocket"): 3})
    telemetry.set_leads({"lobby": 1500})
    telemetry.set_synthesis(backlog=1, speed=2.0, streaming=1, capacity=3)
    telemetry.set_decodes(running=1, waiting=0)
    telemetry.know_channels(["lobby"])
    telemetry.refused.labels(reason="producer_rate").inc()
    return telemetry


def test_exported_families_keep_their_names_types_and_labels():
    """/metrics exports exactly the pinned families, each with its type and label names."""
    assert exported_families(every_series_touched().render()) == EXPORTED
