"""Configuration: built-in defaults, overlaid by a TOML file, the environment and command-line flags."""

import logging
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from broadcaster.core.timeline import TimelineConfig
from broadcaster.errors import BadInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: str = "data"
    database_url: str = ""
    public_url: str = ""
    metrics_token: str = ""  # if set, GET /metrics needs "Authorization: Bearer <it>"
    log_format: str = "text"  # "text" for people, "json" for log collectors (one object per line)
    log_audio_fetches: bool = False  # access-log successful chunk fetches too: one line per listener per sentence
    chunk_cache_mb: float = 16  # recent chunk files held in memory, one copy shared by every listener
    cors_origins: tuple[str, ...] = ("*",)  # pages that may read public channels cross-origin; see web/cors.py
    # Load balancers whose X-Forwarded-For names the client (addresses or networks, e.g. ["10.0.0.0/24"]):
    # per-address limits and logs then count clients, not the balancer. Empty: the connection's address.
    trusted_proxies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cors_origins", _origins(self.cors_origins))
        object.__setattr__(self, "trusted_proxies", _proxies(self.trusted_proxies))
        object.__setattr__(self, "database_url", _database_url(self.database_url))
        if self.public_url and not PUBLIC_URL.fullmatch(self.public_url):
            raise BadInput(
                "expected [server] public_url (or BROADCASTER_PUBLIC_URL) like https://radio.example.org, "
                f"the address listeners open, got {self.public_url!r}"[:300]
            )


PUBLIC_URL = re.compile(r"https?://[^/\s?#]+(/[^\s?#]*)?", re.IGNORECASE)
DRIVERS = {"postgresql+asyncpg": "postgresql+asyncpg", "postgresql": "postgresql+asyncpg",
           "postgres": "postgresql+asyncpg", "sqlite+aiosqlite": "sqlite+aiosqlite", "sqlite": "sqlite+aiosqlite"}  # fmt: skip


def _database_url(url: str) -> str:
    """The [server] database_url, in the form SQLAlchemy's async drivers take: a provider's postgresql://
    (libpq's form) runs on asyncpg, whose TLS parameter is ssl= where libpq's is sslmode=."""
    if not url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in DRIVERS:
        raise BadInput(
            "expected [server] database_url (or BROADCASTER_DATABASE_URL) like "
            f"postgresql://user:password@host/dbname or sqlite:///path/broadcaster.db, got {url.split('@')[-1]!r}"[:300]
        )
    return f"{DRIVERS[scheme.lower()]}://" + re.sub(r"([?&])sslmode=", r"\1ssl=", rest)


ORIGIN = re.compile(r"\*|https?://[^/\s:]+(:\d+)?/?", re.IGNORECASE)


def _origins(value: Any) -> tuple[str, ...]:
    """The [server] cors_origins list: "*" or origins like "https://vtt.example" (scheme, host, optional port)."""
    if isinstance(value, (list, tuple)) and all(isinstance(o, str) and ORIGIN.fullmatch(o) for o in value):
        return tuple(o.lower().rstrip("/") for o in value)
    raise BadInput(
        f'expected [server] cors_origins to be a list of "*" or origins like "https://vtt.example" '
        f"(no path), got {value!r}"[:300]
    )


def _proxies(value: Any) -> tuple[str, ...]:
    """The [server] trusted_proxies list: IP addresses or networks."""
    import ipaddress

    try:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(str(ipaddress.ip_network(v, strict=False)) for v in value)
    except ValueError:
        pass
    raise BadInput(
        f'expected [server] trusted_proxies to be a list like ["10.0.0.2", "10.0.1.0/24"], got {value!r}'[:300]
    )


@dataclass(frozen=True)
class TimelineSection:
    lead_ms: int = 500
    max_lead_ms: int = 3000
    min_lead_ms: int = 200
    sentence_gap_ms: int = 250
    request_gap_ms: int = 600
    generation_timeout_s: float = 180
    generate_ahead_s: float = 300
    open_idle_flush_ms: int = 1500
    open_idle_timeout_s: float = 120

    def __post_init__(self) -> None:
        if not (self.open_idle_flush_ms > 0 and self.open_idle_timeout_s > 0):
            raise BadInput(
                f"expected [timeline] open_idle_flush_ms and open_idle_timeout_s above 0, got "
                f"{self.open_idle_flush_ms!r} and {self.open_idle_timeout_s!r}"
            )
        if not self.generate_ahead_s > 0:
            raise BadInput(f"expected [timeline] generate_ahead_s above 0, got {self.generate_ahead_s!r}")
        if not (0 <= self.min_lead_ms and 0 <= self.lead_ms <= self.max_lead_ms):
            raise BadInput(
                f"expected [timeline] 0 <= min_lead_ms and 0 <= lead_ms <= max_lead_ms, got min_lead_ms "
                f"{self.min_lead_ms!r}, lead_ms {self.lead_ms!r} and max_lead_ms {self.max_lead_ms!r}"
            )


@dataclass(frozen=True)
class LimitsConfig:
    max_text_chars: int = 5000
    max_sentence_chars: int = 300
    max_sentences: int = 200  # per request: each is a chunk to synthesize, encode and announce
    max_queue: int = 200
    ws_send_queue: int = 256
    ws_max_message_bytes: int = 4096
    ws_socket_buffer_bytes: int = 65536
    ws_heartbeat_s: float = 20  # ping interval; a peer that misses a pong within this is closed
    ws_messages_per_second: float = 20  # per connection, sustained
    ws_message_burst: int = 60  # per connection, at once (a page sends 8 time_syncs on connect)
    producer_writes_per_minute: float = 120  # per client address and channel, including refused tokens
    producer_write_burst: int = 30
    text_appends_per_second: float = 10  # to open narrations, per client address and channel (their own bucket)
    text_append_burst: int = 60
    http_acks_per_second: float = 10  # POST /api/audio/played per client address (each one is a row)
    http_ack_burst: int = 100
    max_connections_per_address: int = 64  # open WebSockets and streams per client address (0: no cap)
    connects_per_second: float = (
        2  # new WebSockets and streams per client address, sustained (each is a row; 0: no cap)
    )
    connect_burst: int = 100  # of those, at once (an office's pages after a restart)
    credential_recheck_s: float = 2  # open sockets and streams whose listen key or token was replaced close this soon
    ws_auth_timeout_s: float = 10  # a console's socket must send its auth message within this
    stream_write_timeout_s: float = 30  # a progressive stream whose client reads nothing this long is ended
    max_stream_encoders: int = 32  # progressive streams (one ffmpeg each) open at once, server-wide
    max_stream_encoders_per_address: int = 8  # of those, from one client address

    def __post_init__(self) -> None:
        for name in ("credential_recheck_s", "ws_auth_timeout_s", "stream_write_timeout_s"):
            if not getattr(self, name) > 0:
                raise BadInput(f"expected [limits] {name} above 0, got {getattr(self, name)!r}")
        if self.max_stream_encoders_per_address < 1:
            raise BadInput(
                f"expected [limits] max_stream_encoders_per_address of at least 1, got {self.max_stream_encoders_per_address!r}"
            )
        if self.max_stream_encoders < 1:
            raise BadInput(f"expected [limits] max_stream_encoders of at least 1, got {self.max_stream_encoders!r}")


MIN_PIPER_WINDOW_MS = 500  # below it the overlaps decoded twice (2 x 16 frames, 0.37 s) outweigh the window


VOICE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


@dataclass(frozen=True)
class VoiceConfig:
    """A named voice a request may ask for: a Piper voice (empty `model`: the default one) with its speaker
    and speed."""

    name: str
    model: str = ""  # a Piper .onnx file, its .onnx.json beside it
    speaker: int | None = None  # for a voice with several speakers: which one
    speed: float = 1.0  # above 1 faster, below slower: Piper's length_scale is the voice's own divided by it

    @classmethod
    def parse(cls, name: object, table: object) -> "VoiceConfig":
        if not isinstance(name, str) or not VOICE_NAME.fullmatch(name):
            raise BadInput(f"expected [tts.voices] names like 'innkeeper' (a-z, 0-9, - and _), got {name!r}")
        where = f"[tts.voices.{name}]"
        if not isinstance(table, dict) or set(table) - {"model", "speaker", "speed"}:
            raise BadInput(f'expected {where} to be a table of "model", "speaker" and "speed", got {table!r}'[:300])
        model, speaker, speed = table.get("model", ""), table.get("speaker"), table.get("speed", 1.0)
        if not isinstance(model, str):
            raise BadInput(f"expected {where} model to be a path to a Piper .onnx voice, got {model!r}")
        if speaker is not None and (type(speaker) is not int or speaker < 0):
            raise BadInput(f"expected {where} speaker to be a speaker number (0 or more), got {speaker!r}")
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4:
            raise BadInput(f"expected {where} speed from 0.25 to 4 (1 is the voice's own), got {speed!r}")
        return cls(name, model, speaker, float(speed))


ENGINES = ("piper", "tone")  # tone: a fast stand-in for tests and trials, no voice needed
# What an MP3 can carry: MPEG-1 at these rates, MPEG-2 at half of them, MPEG-2.5 at a quarter; an encoder
# given anything else silently picks the nearest, and the live stream's pacing would go by the wrong rate.
MPEG1_RATES, MPEG2_RATES, MPEG25_RATES = (32000, 44100, 48000), (16000, 22050, 24000), (8000, 11025, 12000)
MP3_BITRATES = {
    **dict.fromkeys(MPEG1_RATES, frozenset((32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320))),
    **dict.fromkeys(MPEG2_RATES, frozenset((8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160))),
    **dict.fromkeys(MPEG25_RATES, frozenset((8, 16, 24, 32, 40, 48, 56, 64))),
}


@dataclass(frozen=True)
class TtsConfig:
    engine: str = "piper"
    piper_model: str = ""
    piper_workers: int = 1  # sentences synthesized at once (each already uses every core)
    piper_memory_arena: bool = False  # faster synthesis, but the peak working memory is never returned
    piper_window_ms: int = 3000  # speech decoded at a time; bounds synthesis memory (0: each sentence whole)
    piper_nice: int = 10  # synthesis runs this much below the server's priority (0: at the same)
    tone_ms_per_char: int = 55
    tone_delay_ms: int = 0
    tone_fail_marker: str = ""
    tone_stall_marker: str = ""
    mp3_bitrate_kbps: int = 64
    # Named voices ([tts.voices.<name>] tables in the file), as VoiceConfigs once parsed.
    voices: tuple[VoiceConfig, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.voices, dict):
            object.__setattr__(self, "voices", tuple(VoiceConfig.parse(k, v) for k, v in self.voices.items()))
        if not isinstance(self.voices, tuple) or not all(isinstance(v, VoiceConfig) for v in self.voices):
            raise BadInput(f"expected [tts.voices.<name>] tables, got {self.voices!r}"[:300])
        if type(self.piper_nice) is not int or not 0 <= self.piper_nice <= 19:
            raise BadInput(
                f"expected [tts] piper_nice from 0 to 19 (how much lower synthesis runs), got {self.piper_nice!r}"
            )
        if self.engine not in ENGINES:
            raise BadInput(f"expected [tts] engine to be one of {', '.join(ENGINES)}, got {self.engine!r}"[:200])
        if self.mp3_bitrate_kbps not in MP3_BITRATES[MPEG2_RATES[0]] | MP3_BITRATES[MPEG1_RATES[0]]:
            raise BadInput(f"expected [tts] mp3_bitrate_kbps to be an MP3 bitrate, got {self.mp3_bitrate_kbps!r}")
        if self.piper_window_ms != 0 and self.piper_window_ms < MIN_PIPER_WINDOW_MS:
            raise BadInput(
                f"expected [tts] piper_window_ms of 0 (off) or at least {MIN_PIPER_WINDOW_MS}, "
                f"got {self.piper_window_ms!r}"
            )


@dataclass(frozen=True)
class MusicConfig:
    folder: str = "music"
    max_upload_mb: float = 100
    max_track_minutes: float = 30
    target_lufs: float = -16
    decode_timeout_s: float = 300  # a decode still running after this is killed and the file refused
    max_decodes: int = 2  # decodes at once, server-wide; others wait their turn
    decode_wait_s: float = 30  # an upload waits this long for a turn, then is answered 503
    decode_memory_mb: int = 1024  # address space each decoder may use
    ambience_folder: str = "ambience"  # the console's scenes: <folder>/<channel>/<this>, else <folder>/<this>

    def __post_init__(self) -> None:
        for name in ("max_track_minutes", "decode_timeout_s", "max_decodes", "decode_memory_mb"):
            if not getattr(self, name) > 0:
                raise BadInput(f"expected [music] {name} above 0, got {getattr(self, name)!r}")
        if not self.decode_wait_s >= 0:
            raise BadInput(f"expected [music] decode_wait_s of 0 or more, got {self.decode_wait_s!r}")


@dataclass(frozen=True)
class RadioConfig:
    autodj: bool = True  # radio-style channels fill silence from the music folder
    announce_next: bool = False  # speak "Up next: <title>, by <artist>" before each auto-DJ track
    station_id_every: int = 0  # say the station's name before every Nth auto-DJ track (0: never)


@dataclass(frozen=True)
class LiveConfig:
    sample_rate: int = 44100
    channels: int = 2
    bitrate_kbps: int = 128

    def __post_init__(self) -> None:
        if self.sample_rate not in MP3_BITRATES:
            raise BadInput(f"expected [live] sample_rate to be one of {sorted(MP3_BITRATES)}, got {self.sample_rate!r}")
        if self.bitrate_kbps not in MP3_BITRATES[self.sample_rate]:
            raise BadInput(
                f"expected [live] bitrate_kbps to be one of {sorted(MP3_BITRATES[self.sample_rate])} at "
                f"{self.sample_rate} Hz, got {self.bitrate_kbps!r}"
            )


@dataclass(frozen=True)
class CleanupConfig:
    interval_s: float = 60
    retention_days: float = 7


@dataclass(frozen=True)
class ScheduleEntry:
    """Queue an item at set times: `say` narration, or `track`, a file in the music folder."""

    channel: str
    cron: str
    say: str = ""
    track: str = ""
    over: bool = False  # `say` over the track on the air (talk-over), not after it


@dataclass(frozen=True)
class ClusterConfig:
    """Several servers on one PostgreSQL database and one Redis (docs/cluster.md). Off while redis_url is empty."""

    redis_url: str = ""  # e.g. "redis://10.0.0.5:6379/0"; with a PostgreSQL database_url, turns cluster mode on
    internal_host: str = "127.0.0.1"  # where this process takes requests forwarded by the others; another
    # machine's servers must reach it here, so set this machine's private address when there are several
    internal_port: int = 0  # 0: any free port; else worker n of `serve --workers N` takes internal_port + n - 1
    lease_s: float = 3  # a channel's owner that died is replaced within this and a third (at once on its own
    # machine); an owner that could not renew for two thirds of it stops running the channel
    history: int = 1000  # messages kept per channel on Redis, for listeners and processes that missed some
    redis_prefix: str = "broadcaster"  # keys on Redis start with this (several deployments on one Redis)

    def __post_init__(self) -> None:
        if not self.lease_s >= 1:
            raise BadInput(f"expected [cluster] lease_s of at least 1, got {self.lease_s!r}")
        if self.history < 10:
            raise BadInput(f"expected [cluster] history of at least 10 messages, got {self.history!r}")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise BadInput(f"expected [cluster] redis_url like redis://host:6379/0, got {self.redis_url!r}"[:200])

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)


# Settable from the environment too (containers): the variable wins over the file.
ENVIRONMENT = {
    "BROADCASTER_DATABASE_URL": ("server", "database_url"),
    "BROADCASTER_REDIS_URL": ("cluster", "redis_url"),
    "BROADCASTER_PUBLIC_URL": ("server", "public_url"),
}


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    timeline: TimelineSection = field(default_factory=TimelineSection)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    cleanup: CleanupConfig = field(default_factory=CleanupConfig)
    music: MusicConfig = field(default_factory=MusicConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    radio: RadioConfig = field(default_factory=RadioConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    schedule: tuple[ScheduleEntry, ...] = ()

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def database_url(self) -> str:
        if self.server.database_url:
            return self.server.database_url
        return f"sqlite+aiosqlite:///{(self.data_path / 'broadcaster.db').resolve()}"

    def check_cluster(self) -> None:
        """Cluster mode shares one database between servers: SQLite cannot be shared that way."""
        if self.cluster.enabled and not self.database_url.startswith("postgresql"):
            raise BadInput(
                "expected a PostgreSQL [server] database_url (or BROADCASTER_DATABASE_URL) with [cluster] "
                "redis_url: several servers cannot share a SQLite file; remove redis_url to run one server"
            )

    @property
    def base_url(self) -> str:
        host = self.server.host
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        return self.server.public_url.rstrip("/") or f"http://{host}:{self.server.port}"

    def timeline_config(self) -> TimelineConfig:
        t = self.timeline
        return TimelineConfig(
            lead_ms=t.lead_ms,
            max_lead_ms=t.max_lead_ms,
            min_lead_ms=t.min_lead_ms,
            sentence_gap_ms=t.sentence_gap_ms,
            request_gap_ms=t.request_gap_ms,
            generation_timeout_ms=int(t.generation_timeout_s * 1000),
            generate_ahead_ms=int(t.generate_ahead_s * 1000),
            open_idle_flush_ms=t.open_idle_flush_ms,
            open_idle_timeout_ms=int(t.open_idle_timeout_s * 1000),
        )

    def with_server(self, **changes: Any) -> "Config":
        changes = {k: v for k, v in changes.items() if v is not None}
        config = replace(self, server=replace(self.server, **changes))
        check_numbers(config)
        return config


def load_config(path: str | Path | None = None, environ: Mapping[str, str] = os.environ) -> Config:
    """Defaults, overlaid by the TOML file at `path` if given, then by the environment (ENVIRONMENT)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BadInput(f"expected a readable TOML config file at {path}, got: {exc}") from None
    for variable, (section, key) in ENVIRONMENT.items():
        if environ.get(variable):
            data.setdefault(section, {})[key] = environ[variable]
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> Config:
    base = Config()
    sections: dict[str, Any] = {"schedule": _schedule(data.get("schedule", []))}
    for f in fields(Config):
        if f.name == "schedule":
            continue
        section = getattr(base, f.name)
        sections[f.name] = _overlay(f.name, section, data.get(f.name, {}))
    unknown = set(data) - set(sections)
    if unknown:
        raise BadInput(f"expected config sections {sorted(sections)}, got unknown {sorted(unknown)}")
    config = Config(**sections)
    check_numbers(config)
    return config


# Numbers that may be 0 (an "off", "none" or "any"); every other number must be above 0, and
# finite. A zero or negative interval would spin a loop, a negative retention purge everything.
ZERO_ALLOWED = {
    ("server", "port"), ("server", "chunk_cache_mb"), ("cluster", "internal_port"),
    ("timeline", "lead_ms"), ("timeline", "min_lead_ms"), ("timeline", "sentence_gap_ms"),
    ("timeline", "request_gap_ms"), ("limits", "ws_socket_buffer_bytes"), ("limits", "max_connections_per_address"),
    ("limits", "connects_per_second"),
    ("tts", "piper_window_ms"), ("tts", "piper_nice"), ("tts", "tone_ms_per_char"), ("tts", "tone_delay_ms"),
    ("music", "decode_wait_s"), ("radio", "station_id_every"), ("cleanup", "retention_days"),
}  # fmt: skip
NEGATIVE_ALLOWED = {("music", "target_lufs")}
UPPER = {("server", "port"): 65535, ("cluster", "internal_port"): 65535, ("live", "channels"): 2}


def check_numbers(config: Config) -> None:
    """Every number of every section: finite, and in its range (ZERO_ALLOWED, NEGATIVE_ALLOWED, UPPER)."""
    for section in fields(Config):
        values = getattr(config, section.name)
        if not is_dataclass(values):
            continue
        for f in fields(values):
            value, key = getattr(values, f.name), (section.name, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or key in NEGATIVE_ALLOWED:
                continue
            low = 0 if key in ZERO_ALLOWED else None
            if not math.isfinite(value) or (value < 0 if low == 0 else value <= 0) or value > UPPER.get(key, math.inf):
                bound = "0 or more" if low == 0 else "above 0"
                top = f" and at most {UPPER[key]}" if key in UPPER else ""
                raise BadInput(f"expected [{section.name}] {f.name} {bound}{top}, got {value!r}")


# Keys that older versions read and this one does not: a config file that still sets one is served
# with a warning naming it, not refused.
RETIRED = {
    ("server", "fanout_processes"): "the fan-out helper processes are gone (docs/performance.md)",
    ("server", "gc_freeze"): "the start-up heap is always frozen once, and the collector otherwise left alone",
    ("server", "gc_thaw_minutes"): "nothing is frozen after start-up, so there is nothing to thaw",
    ("server", "allocator"): "Python's own allocator is used (set PYTHONMALLOC=malloc in the environment for glibc's)",
}


def _overlay(name: str, section: Any, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(section)}
    values = dict(values)
    for key in [key for key in values if (name, key) in RETIRED]:
        log.warning("[%s] %s in the config file is no longer used, and was ignored: %s", name, key, RETIRED[name, key])
        del values[key]
    for key, value in values.items():
        if key not in known:
            raise BadInput(f"expected one of {sorted(known)} in [{name}], got {key!r}")
        default = getattr(section, key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise BadInput(f"expected true or false for [{name}] {key}, got {value!r}")
        elif isinstance(default, (int, float)) and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise BadInput(f"expected a number for [{name}] {key}, got {value!r}")
        elif known[key].type in (int, "int") and not isinstance(value, int):  # the annotation: 20 may be a float
            raise BadInput(f"expected a whole number for [{name}] {key}, got {value!r}")
        if isinstance(default, str) and not isinstance(value, str):
            raise BadInput(f"expected a string for [{name}] {key}, got {value!r}")
    return replace(section, **values)


def _schedule(entries: Any) -> tuple[ScheduleEntry, ...]:
    from broadcaster.core.cron import parse_cron

    if not isinstance(entries, list):
        raise BadInput("expected [[schedule]] tables in the config")
    parsed = []
    for entry in entries:
        known = {f.name for f in fields(ScheduleEntry)}
        if not isinstance(entry, dict) or set(entry) - known or not {"channel", "cron"} <= set(entry):
            raise BadInput(f"expected a [[schedule]] with channel, cron and say or track, got {entry!r}"[:300])
        if not all(isinstance(value, bool if key == "over" else str) for key, value in entry.items()):
            raise BadInput(
                f"expected text values (and over = true or false) in the [[schedule]] entry, got {entry!r}"[:300]
            )
        item = ScheduleEntry(**entry)
        if bool(item.say) == bool(item.track):
            raise BadInput(f"expected exactly one of say or track in the schedule entry for {item.cron!r}")
        if item.over and not item.say:
            raise BadInput(f"expected over only with say, in the schedule entry for {item.cron!r}")
        parse_cron(item.cron)
        parsed.append(item)
    return tuple(parsed)
