"""Config files are checked against the defaults' types: a wrong value is refused with a clear message."""

import pytest

from broadcaster.config import config_from_dict, load_config
from broadcaster.errors import BadInput


def test_whole_number_settings_refuse_fractions():
    with pytest.raises(BadInput, match=r"whole number for \[server\] fanout_processes, got 2.5"):
        config_from_dict({"server": {"fanout_processes": 2.5}})


def test_fractional_settings_take_whole_numbers_too():
    config = config_from_dict(
        {"server": {"chunk_cache_mb": 4, "fanout_processes": 2}, "cleanup": {"retention_days": 3}}
    )
    assert (config.server.chunk_cache_mb, config.server.fanout_processes, config.cleanup.retention_days) == (4, 2, 3)


@pytest.mark.parametrize(
    "section,key,value", [("server", "port", "80"), ("limits", "max_queue", True), ("server", "chunk_cache_mb", "16")]
)
def test_wrong_types_are_refused(section, key, value):
    with pytest.raises(BadInput, match=key):
        config_from_dict({section: {key: value}})


def test_an_unknown_allocator_is_refused_with_the_choices():
    """A misspelt allocator is refused up front, naming the two it could be."""
    from broadcaster.process import choose_small_object_allocator

    config = config_from_dict({"server": {"allocator": "jemalloc"}})
    with pytest.raises(BadInput, match=r"allocator 'malloc' or 'pymalloc', got 'jemalloc'"):
        choose_small_object_allocator(config.server.allocator, restart=False)


def test_an_unknown_freeze_mode_is_refused_with_the_choices():
    with pytest.raises(BadInput, match=r"expected a string for \[server\] gc_freeze, got True"):
        config_from_dict({"server": {"gc_freeze": True}})  # an old config's true: refused, not taken as a mode
    with pytest.raises(BadInput, match=r"gc_freeze among audience, startup, survivors, off, got 'all'"):
        config_from_dict({"server": {"gc_freeze": "all"}})


@pytest.mark.parametrize("minutes", [0, -1])
def test_a_thaw_interval_of_zero_or_less_is_refused(minutes):
    """It would walk the whole heap on every turn of the event loop."""
    with pytest.raises(BadInput, match=rf"gc_thaw_minutes above 0, got {minutes}"):
        config_from_dict({"server": {"gc_thaw_minutes": minutes}})
    assert config_from_dict({"server": {"gc_thaw_minutes": 0.5}}).server.gc_thaw_minutes == 0.5


@pytest.mark.parametrize("timeline", [{"lead_ms": 4000}, {"lead_ms": 500, "max_lead_ms": 400}, {"lead_ms": -1}])
def test_a_lead_outside_zero_to_its_ceiling_is_refused(timeline):
    with pytest.raises(BadInput, match=r"\[timeline\] 0 <= lead_ms <= max_lead_ms"):
        config_from_dict({"timeline": timeline})


def test_the_lead_ceiling_reaches_the_channel():
    config = config_from_dict({"timeline": {"lead_ms": 800, "max_lead_ms": 800}}).timeline_config()
    assert (config.lead_ms, config.max_lead_ms) == (800, 800)


def test_the_database_url_may_come_from_the_environment(tmp_path):
    """BROADCASTER_DATABASE_URL wins over the file (containers set it), and only when set."""
    path = tmp_path / "config.toml"
    path.write_text('[server]\ndatabase_url = "sqlite+aiosqlite:///from-file.db"\n')
    url = "postgresql+asyncpg://radio@db/radio"
    assert load_config(path, {"BROADCASTER_DATABASE_URL": url}).database_url == url
    assert load_config(path, {}).database_url == "sqlite+aiosqlite:///from-file.db"
    assert load_config(None, {"BROADCASTER_DATABASE_URL": url}).database_url == url
