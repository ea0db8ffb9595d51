"""Config files are checked against the defaults' types: a wrong value is refused with a clear message."""

import pytest

from broadcaster.config import config_from_dict, load_config
from broadcaster.errors import BadInput


def test_whole_number_settings_refuse_fractions():
    with pytest.raises(BadInput, match=r"whole number for \[limits\] max_queue, got 2.5"):
        config_from_dict({"limits": {"max_queue": 2.5}})


def test_fractional_settings_take_whole_numbers_too():
    config = config_from_dict(
        {"server": {"chunk_cache_mb": 4}, "limits": {"max_queue": 2}, "cleanup": {"retention_days": 3}}
    )
    assert (config.server.chunk_cache_mb, config.limits.max_queue, config.cleanup.retention_days) == (4, 2, 3)


@pytest.mark.parametrize(
    "section,key,value", [("server", "port", "80"), ("limits", "max_queue", True), ("server", "chunk_cache_mb", "16")]
)
def test_wrong_types_are_refused(section, key, value):
    with pytest.raises(BadInput, match=key):
        config_from_dict({section: {key: value}})


@pytest.mark.parametrize(
    "key,value", [("fanout_processes", 2), ("gc_freeze", "audience"), ("gc_thaw_minutes", 10), ("allocator", "malloc")]
)
def test_a_key_older_versions_read_is_ignored_with_a_warning(key, value, caplog):
    """An upgraded server still starts on its old config file, and the log names the key it ignored and why."""
    config = config_from_dict({"server": {key: value, "port": 9000}})
    assert config.server.port == 9000
    assert f"[server] {key} in the config file is no longer used" in caplog.text


def test_an_unknown_key_is_still_refused_with_the_choices():
    with pytest.raises(BadInput, match=r"expected one of .*'port'.* in \[server\], got 'prot'"):
        config_from_dict({"server": {"prot": 9000}})


@pytest.mark.parametrize("timeline", [{"lead_ms": 4000}, {"lead_ms": 500, "max_lead_ms": 400}, {"lead_ms": -1}])
def test_a_lead_outside_zero_to_its_ceiling_is_refused(timeline):
    with pytest.raises(BadInput, match=r"\[timeline\] 0 <= min_lead_ms and 0 <= lead_ms <= max_lead_ms"):
        config_from_dict({"timeline": timeline})


@pytest.mark.parametrize("ahead_s", [0, -5])
def test_generating_ahead_by_nothing_is_refused(ahead_s):
    with pytest.raises(BadInput, match=r"\[timeline\] generate_ahead_s above 0"):
        config_from_dict({"timeline": {"generate_ahead_s": ahead_s}})


def test_how_far_ahead_audio_is_made_reaches_the_channel():
    assert config_from_dict({"timeline": {"generate_ahead_s": 90}}).timeline_config().generate_ahead_ms == 90_000


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


def test_the_public_url_may_come_from_the_environment():
    """BROADCASTER_PUBLIC_URL is the address printed links use, for other devices on the network."""
    config = load_config(None, {"BROADCASTER_PUBLIC_URL": "http://192.168.1.20:8765/"})
    assert config.base_url == "http://192.168.1.20:8765"


def test_voices_are_read_from_their_tables():
    config = config_from_dict({"tts": {"voices": {"innkeeper": {"speed": 1.2, "speaker": 0}, "bard": {}}}})
    assert [(v.name, v.model, v.speaker, v.speed) for v in config.tts.voices] == [
        ("innkeeper", "", 0, 1.2),
        ("bard", "", None, 1.0),
    ]
    assert config_from_dict({}).tts.voices == ()


@pytest.mark.parametrize(
    ("voices", "words"),
    [
        ({"Inn Keeper": {}}, "names like"),
        ({"bard": {"pitch": 2}}, "a table of"),
        ({"bard": "fast"}, "a table of"),
        ({"bard": {"speed": 0}}, "speed from 0.25 to 4"),
        ({"bard": {"speed": True}}, "speed from 0.25 to 4"),
        ({"bard": {"speaker": -1}}, "speaker number"),
        ({"bard": {"speaker": 1.5}}, "speaker number"),
        ({"bard": {"model": 5}}, "path to a Piper"),
        (["bard"], "tables"),
    ],
)
def test_a_bad_voice_is_refused_with_what_was_expected(voices, words):
    with pytest.raises(BadInput, match=words):
        config_from_dict({"tts": {"voices": voices}})


@pytest.mark.parametrize("nice", [-1, 20, True, 2.5])
def test_a_synthesis_priority_outside_the_nice_range_is_refused(nice):
    with pytest.raises(BadInput, match=r"piper_nice"):
        config_from_dict({"tts": {"piper_nice": nice}})
    assert config_from_dict({"tts": {"piper_nice": 0}}).tts.piper_nice == 0
    assert config_from_dict({}).tts.piper_nice == 10


@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    [
        ("cleanup", "interval_s", 0, "above 0"),  # would spin the cleanup loop
        ("cleanup", "retention_days", -1, "0 or more"),  # would purge everything finished
        ("cleanup", "retention_days", float("nan"), "0 or more"),
        ("limits", "max_queue", -5, "above 0"),
        ("limits", "ws_heartbeat_s", float("inf"), "above 0"),
        ("limits", "max_connections_per_address", -3, "0 or more"),
        ("server", "port", 99_999_999, "0 or more and at most 65535"),
        ("live", "channels", 3, "above 0 and at most 2"),
        ("radio", "station_id_every", -1, "0 or more"),
    ],
)
def test_numbers_out_of_their_range_are_refused(section, key, value, words):
    """A number that makes no sense for its setting is refused at start, naming the setting."""
    with pytest.raises(BadInput, match=rf"\[{section}\] {key} {words}"):
        config_from_dict({section: {key: value}})


def test_zero_where_it_means_off_and_negative_loudness_are_accepted():
    """0 turns the per-address cap off and keeps nothing finished; loudness targets are negative."""
    config = config_from_dict(
        {"limits": {"max_connections_per_address": 0}, "cleanup": {"retention_days": 0}, "music": {"target_lufs": -23}}
    )
    assert config.limits.max_connections_per_address == 0 and config.music.target_lufs == -23


@pytest.mark.parametrize(
    ("section", "values", "words"),
    [
        ("tts", {"engine": "Tone"}, r"\[tts\] engine to be one of piper, tone, got 'Tone'"),
        ("tts", {"mp3_bitrate_kbps": 7}, r"\[tts\] mp3_bitrate_kbps to be an MP3 bitrate, got 7"),
        ("live", {"sample_rate": 12345}, r"\[live\] sample_rate to be one of \[8000, 11025"),
        ("live", {"bitrate_kbps": 100}, r"\[live\] bitrate_kbps to be one of \[32, 40.* at 44100 Hz, got 100"),
        ("live", {"sample_rate": 22050, "bitrate_kbps": 320}, r"bitrate_kbps to be one of \[8, 16.* at 22050 Hz"),
        ("server", {"public_url": "radio.example.org"}, r"\[server\] public_url .* like https://"),
        ("server", {"database_url": "mysql://radio:secret@db/radio"}, r"database_url .* got 'db/radio'"),
        ("server", {"database_url": "not a url"}, r"\[server\] database_url"),
    ],
)
def test_values_a_library_would_stumble_on_later_are_refused_at_start(section, values, words):
    """An engine, MP3 setting, URL the server would otherwise take and fail on (a traceback, or an encoder
    silently picking another rate) is refused at start with the setting named; no password is echoed."""
    with pytest.raises(BadInput, match=words) as refused:
        config_from_dict({section: values})
    assert "secret" not in str(refused.value)


def test_a_providers_postgresql_url_runs_on_the_async_driver():
    """postgresql:// as providers and libpq write it, with libpq's sslmode, becomes asyncpg's form."""
    config = config_from_dict({"server": {"database_url": "postgres://radio:pw@db.example:5432/radio?sslmode=require"}})
    assert config.database_url == "postgresql+asyncpg://radio:pw@db.example:5432/radio?ssl=require"
    assert config_from_dict({"server": {"database_url": "sqlite:////srv/b.db"}}).database_url == (
        "sqlite+aiosqlite:////srv/b.db"
    )
    assert config_from_dict({"live": {"sample_rate": 22050, "bitrate_kbps": 64}}).live.sample_rate == 22050


def test_links_to_a_server_on_an_ipv6_address_bracket_it():
    assert config_from_dict({"server": {"host": "::1", "port": 9000}}).base_url == "http://[::1]:9000"
