"""Telemetry: what /metrics exports, in prometheus_client registries of its own."""

import re

import prometheus_client

from broadcaster.core.model import Chunk
from broadcaster.runtime.telemetry import Telemetry


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
    assert sample(telemetry, "broadcaster_ack_lag_seconds_count", via="ws") == 2
    assert sample(telemetry, "broadcaster_ack_lag_seconds_sum", via="ws") == 0.25


def test_known_label_values_start_at_zero():
    """Byte, drop, status-class and collector-pause series exist at 0 before anything happens."""
    telemetry = Telemetry()
    assert sample(telemetry, "broadcaster_stream_bytes_total", kind="progressive") == 0
    assert sample(telemetry, "broadcaster_slow_consumers_dropped_total", kind="live") == 0
    assert sample(telemetry, "broadcaster_http_responses_total", status_class="5xx") == 0
    assert sample(telemetry, "broadcaster_gc_pause_seconds_count", generation="2") == 0


def test_gc_pauses_fill_cumulative_buckets_by_generation():
    """Pauses land in every bucket whose bound they do not exceed, under their own generation only."""
    telemetry = Telemetry()
    for seconds in (0.0005, 0.001, 0.3, 9.0):
        telemetry.gc_paused(2, seconds)
    telemetry.gc_paused(0, 0.002)

    def bucket(generation: str, le: str) -> float:
        return sample(telemetry, "broadcaster_gc_pause_seconds_bucket", generation=generation, le=le)

    assert [bucket("2", le) for le in ("0.001", "0.25", "0.5", "2.5", "+Inf")] == [2, 2, 3, 3, 4]
    assert sample(telemetry, "broadcaster_gc_pause_seconds_sum", generation="2") == 9.3015
    assert (bucket("0", "0.001"), bucket("0", "0.0025")) == (0, 1)
    assert sample(telemetry, "broadcaster_gc_pause_seconds_count", generation="1") == 0


def test_gauges_of_the_present_are_read_at_each_scrape(tmp_path):
    """Uptime, open descriptors and resident memory come from the process when rendered, not from a stored value."""
    telemetry = Telemetry()
    uptime, fds = sample(telemetry, "broadcaster_uptime_seconds"), sample(telemetry, "broadcaster_process_open_fds")
    with open(tmp_path / "held", "w"):
        assert sample(telemetry, "broadcaster_process_open_fds") == fds + 1
    assert sample(telemetry, "broadcaster_uptime_seconds") > uptime > 0
    assert sample(telemetry, "broadcaster_process_resident_memory_bytes") > 10_000_000


def test_series_taken_at_scrape_time_forget_what_is_gone():
    """A channel missing from the next counts no longer appears in the listener and lead gauges."""
    telemetry = Telemetry()
    telemetry.set_listeners({("gone", "live"): 2})
    telemetry.set_leads({"gone": 900})
    telemetry.set_listeners({("here", "live"): 1})
    telemetry.set_leads({"here": 1200})
    text = telemetry.render()
    assert 'channel="gone"' not in text
    assert sample(telemetry, "broadcaster_listeners", channel="here", kind="live") == 1
    assert sample(telemetry, "broadcaster_lead_seconds", channel="here") == 1.2


def test_each_telemetry_has_its_own_registry_and_the_global_one_stays_empty():
    """Two instances count apart, and nothing is registered in prometheus_client's default registry."""
    first, second = Telemetry(), Telemetry()
    first.sent("live", 100)
    assert sample(first, "broadcaster_stream_bytes_total", kind="live") == 100
    assert sample(second, "broadcaster_stream_bytes_total", kind="live") == 0
    assert "broadcaster_" not in prometheus_client.generate_latest().decode()


def sample(telemetry: Telemetry, name: str, **labels: str) -> float:
    """One sample's value as it would be rendered now; fails if the series does not exist."""
    value = telemetry.registry.get_sample_value(name, labels)
    assert value is not None, f"expected a sample {name}{labels}"
    return value


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
    "broadcaster_listener_output_glitches_total": ("counter", set()),
    "broadcaster_listener_resyncs_total": ("counter", set()),
    "broadcaster_listener_buffer_moves_total": ("counter", set()),
    "broadcaster_listener_sync_error_seconds": ("histogram", set()),
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
    "broadcaster_gc_pause_seconds": ("histogram", {"generation"}),
    "broadcaster_gc_frozen_objects": ("gauge", set()),
    "broadcaster_uptime_seconds": ("gauge", set()),
    "broadcaster_synthesis_backlog": ("gauge", set()),
    "broadcaster_synthesis_speed_ratio": ("gauge", set()),
    "broadcaster_streaming_requests": ("gauge", {"limit"}),
    "broadcaster_track_decodes": ("gauge", {"state"}),
    "broadcaster_channels_run": ("gauge", set()),
    "broadcaster_cluster_announcements_waiting": ("gauge", set()),
    "broadcaster_cluster_forwarded_requests_total": ("counter", set()),
    "broadcaster_cluster_ownership_changes_total": ("counter", {"change"}),
    "broadcaster_cluster_feed_resets_total": ("counter", {"reason"}),
    "broadcaster_cluster_bus_reconnects_total": ("counter", set()),
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
