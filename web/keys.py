"""Typed application state."""

from typing import TYPE_CHECKING

from aiohttp import web

from broadcaster.config import Config
from broadcaster.runtime.live import LiveStreams
from broadcaster.runtime.station import Station
from broadcaster.runtime.telemetry import Telemetry
from db.audio_store import AudioStore
from db.store import Store
from tts.engine import TtsEngine

if TYPE_CHECKING:
    from .cluster import Cluster

from .clients import TRUSTED  # noqa: F401  (defined with what reads it; one place for the app's keys)
from .fanout import Hub
from .feed import Feeds
from .limits import Access
from .revocation import CredentialWatch

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
AUDIO = web.AppKey("audio", AudioStore)
ENGINE = web.AppKey("engine", TtsEngine)
STATION = web.AppKey("station", Station)
HUB = web.AppKey("hub", Hub)
LIVE = web.AppKey("live", LiveStreams)
METRICS = web.AppKey("metrics", Telemetry)
ACCESS = web.AppKey("access", Access)
WATCH = web.AppKey("watch", CredentialWatch)
FEEDS = web.AppKey("feeds", Feeds)
CLUSTER: web.AppKey["Cluster"] = web.AppKey("cluster")  # only in cluster mode (web/cluster.py)
