"""How much one client may do: producer writes per minute, open connections and new ones per address;
and how many progressive-stream encoders the whole server runs at once."""

import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from broadcaster.config import LimitsConfig
from broadcaster.core.ratelimit import KeyedLimiter
from broadcaster.errors import RateLimited
from broadcaster.runtime.clock import Clock

CONNECTION_RETRY_S = 10
READY_CHUNKS_KEPT = 256  # chunks whose ready reports are remembered by address (the lead's own window)
STREAM_RETRY_S = 10


class TooManyConnections(RateLimited):
    code = "too_many_connections"


class TooManyStreams(RateLimited):
    """Not this client's excess but the server's: every encoder it allows is busy."""

    status = 503
    code = "too_many_streams"


class Access:
    def __init__(self, limits: LimitsConfig, clock: Clock, count_refusal: Callable[[str], None] = lambda reason: None):
        self.clock = clock
        self.refused = count_refusal  # by reason, for /metrics
        self.writes = KeyedLimiter(limits.producer_writes_per_minute / 60, limits.producer_write_burst)
        self.writes_per_minute = limits.producer_writes_per_minute
        self.appends = KeyedLimiter(limits.text_appends_per_second, limits.text_append_burst)
        self.appends_per_second = limits.text_appends_per_second
        self.acks = KeyedLimiter(limits.http_acks_per_second, limits.http_ack_burst)
        self.acks_per_second = limits.http_acks_per_second
        self.max_connections = limits.max_connections_per_address
        self.connects = KeyedLimiter(limits.connects_per_second, limits.connect_burst)
        self.connects_per_second = limits.connects_per_second
        self.open: Counter[str] = Counter()  # open WebSockets and streams per client address
        self.max_encoders = limits.max_stream_encoders
        self.encoders = 0  # progressive streams open now, each with its own ffmpeg
        self.max_encoders_per_address = limits.max_stream_encoders_per_address
        self.encoders_of: Counter[str] = Counter()  # the same, per client address
        self.ready_reports: OrderedDict[str, Counter[str]] = OrderedDict()  # chunk id -> reports by address

    def check_write_rate(self, remote: str, channel: str) -> None:
        wanted = f"at most {self.writes_per_minute:g} producer writes a minute to channel {channel!r} from one address"
        self._take(self.writes, (remote, channel), "producer_rate", wanted, "")

    def check_append_rate(self, remote: str, channel: str) -> None:
        """Appends to open narrations (a text stream arriving a few words at a time) have their own bucket."""
        wanted = (
            f"at most {self.appends_per_second:g} appends a second to open narrations of channel {channel!r} "
            "from one address"
        )
        self._take(self.appends, (remote, channel), "append_rate", wanted, "send text in larger pieces, or ")

    def counts_ready_report(self, chunk_id: str, remote: str) -> bool:
        """Whether a report of when a listener had the chunk ready counts towards the lead: an address
        reports a chunk at most as many times as it has connections open (an office behind one address
        has many listeners; one client reconnecting to report again is still one)."""
        reported = self.ready_reports.setdefault(chunk_id, Counter())
        self.ready_reports.move_to_end(chunk_id)
        while len(self.ready_reports) > READY_CHUNKS_KEPT:
            self.ready_reports.popitem(last=False)
        if reported[remote] >= max(1, self.open[remote]):
            return False
        reported[remote] += 1
        return True

    def check_ack_rate(self, remote: str) -> None:
        """Acknowledgements over HTTP (clients without a socket): each is a row, so each address has a bucket."""
        wanted = f"at most {self.acks_per_second:g} acknowledgements a second from one address"
        self._take(self.acks, (remote, ""), "ack_rate", wanted, "")

    def _take(self, limiter: KeyedLimiter, key: tuple[str, str], reason: str, wanted: str, advice: str) -> None:
        wait_ms = limiter.take(key, self.clock())
        if wait_ms:
            self.refused(reason)
            wait_s = math.ceil(wait_ms / 1000)
            raise RateLimited(f"expected {wanted}, got more; {advice}try again in {wait_s} s", wait_s)

    @contextmanager
    def connection(self, remote: str) -> Iterator[None]:
        """Hold one of the address's connection slots for the duration of a socket or stream."""
        if self.max_connections and self.open[remote] >= self.max_connections:
            self.refused("connections")
            raise TooManyConnections(
                f"expected at most {self.max_connections} open connections from one address, "
                f"got another one from {remote}; close some and retry",
                CONNECTION_RETRY_S,
            )
        if self.connects_per_second:  # each connection is a row for as long as the cleanup keeps them
            wanted = f"at most {self.connects_per_second:g} new connections a second from one address"
            self._take(self.connects, (remote, ""), "connect_rate", wanted, "")
        self.open[remote] += 1
        try:
            yield
        finally:
            self.open[remote] -= 1
            if not self.open[remote]:
                del self.open[remote]

    @contextmanager
    def stream_encoder(self, remote: str) -> Iterator[None]:
        """Hold one of the server's progressive-stream encoders for the duration of a stream; one
        address gets at most its share, so that it cannot take them all."""
        if self.encoders_of[remote] >= self.max_encoders_per_address:
            self.refused("stream_encoders")
            raise TooManyConnections(
                f"expected at most {self.max_encoders_per_address} progressive streams open at once from one "
                f"address, got another from {remote}; close some and retry",
                STREAM_RETRY_S,
            )
        if self.encoders >= self.max_encoders:
            self.refused("stream_encoders")
            raise TooManyStreams(
                f"expected at most {self.max_encoders} progressive streams open at once on this server, got "
                f"another; try again in a little while, or play the chunk URLs instead",
                STREAM_RETRY_S,
            )
        self.encoders += 1
        self.encoders_of[remote] += 1
        try:
            yield
        finally:
            self.encoders -= 1
            self.encoders_of[remote] -= 1
            if not self.encoders_of[remote]:
                del self.encoders_of[remote]
