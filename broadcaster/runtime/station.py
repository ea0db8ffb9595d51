"""All channels of one server: loads them on first use, submits, steers the queue, cleans up."""

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from random import Random

from broadcaster.auth import valid_channel_name
from broadcaster.config import Config
from broadcaster.core.bed import Bed
from broadcaster.core.channel import Channel
from broadcaster.core.events import ChannelPaused, ChannelResumed, RequestPlaced
from broadcaster.core.ids import new_id
from broadcaster.core.model import Chunk, RepeatMode, Request, Writing
from broadcaster.core.states import FINAL_REQUEST_STATES, RequestState
from broadcaster.core.titles import one_line
from broadcaster.errors import BadInput, BroadcasterError, Conflict, NotFound
from broadcaster.process import release_free_memory
from db.audio_store import AudioStore
from db.leases import Lease
from db.store import Store
from tts.engine import TtsEngine
from tts.sentences import split_complete, split_sentences
from tts.tracks import DecodeLimits, TrackInfo, prepare_track
from tts.voices import Voices

from .accounts import Gate
from .autodj import AutoDJ, radio_files
from .beds import BedMaker, bed_request, fade_ms, music_file, tracks_of
from .cleanup import orphan_grace_s, purge, sweep_local
from .clock import Clock, wall_clock_ms
from .decoders import Decoders
from .delivery import Mp3Delivery
from .generator import ChunkMaker
from .runner import ChannelRunner, Publish, QueueFull
from .schedule import Scheduler
from .synthesis import SynthesisQueue
from .telemetry import Telemetry

log = logging.getLogger(__name__)

CHUNK_FACTS = 20_000  # chunks whose request and channel are remembered: hours of a busy station


def _guarded(step, *args):  # noqa: ANN001, ANN002, ANN202
    """Run a core step whose ValueError means the request was in the wrong place for it."""
    try:
        return step(*args)
    except (ValueError, KeyError) as exc:
        raise Conflict(str(exc).strip("'\"")) from None


def _cancel_step(channel: Channel, request_id: str, skip: bool, now_ms: int) -> list:
    request = channel.find_request(request_id)
    if request is None or request.state in FINAL_REQUEST_STATES:
        state = request.state if request else "finished"
        raise Conflict(f"request {request_id} is already {state}; there is nothing to stop")
    head = request is channel.now_playing() or (request in channel.overlay and request.starts_at_ms is not None)
    if skip and not head:
        raise Conflict(f"request {request_id} is not on the air; cancel it instead of skipping")
    # The head whose first sentence is still being made is not heard yet: either word stops it.
    if not skip and head and request.starts_at_ms is not None:
        raise Conflict(f"request {request_id} is on the air; skip it instead of cancelling")
    return channel.cancel(request_id, now_ms)


class NotHere(BroadcasterError):
    """In a cluster: another process runs this channel (or nobody does, during a takeover)."""

    def __init__(self, channel: str):
        super().__init__(f"channel {channel!r} is run by another server")
        self.channel = channel


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Station:
    def __init__(
        self,
        config: Config,
        store: Store,
        audio: AudioStore,
        engine: TtsEngine,
        publish: Publish,
        clock: Clock = wall_clock_ms,
        metrics: Telemetry | None = None,
        audience: Callable[[str], int] = lambda channel: 0,
        clustered: bool = False,
        voices: Voices | None = None,
    ):
        self.config = config
        self.voices = voices or Voices(engine)
        self.store = store
        self.audio = audio
        self.engine = engine
        self.metrics = metrics or Telemetry()
        self.publish = self.metrics.observing(publish)  # failures and underruns are counted from the events
        self.clock = clock
        self.audience = audience  # listeners of a channel connected now
        # In a cluster this process runs only the channels whose lease it holds (`adopt`, `let_go`,
        # driven by runtime/ownership.py); the others are run elsewhere and `runner` raises NotHere.
        self.clustered = clustered
        self.on_lost: Callable[[str], None] = lambda name: None  # a write was fenced off: let the channel go
        self.delivery = Mp3Delivery(audio, config.tts.mp3_bitrate_kbps)
        self.synthesis = SynthesisQueue(engine, clock)
        self.maker = ChunkMaker(engine, audio, clock, self.delivery, self.metrics, self.synthesis, self.voices)
        self.runners: dict[str, ChannelRunner] = {}
        self.gate = Gate(store)
        self._loading = asyncio.Lock()
        self._cleanup_task: asyncio.Task | None = None
        self.autodjs: dict[str, AutoDJ] = {}
        self._background: set[asyncio.Task] = set()
        self._stopping = False
        self._auto_count: dict[str, int] = {}
        self.rng = Random()
        self._chunk_facts: OrderedDict[str, tuple[str, str]] = OrderedDict()  # chunk id -> request id, channel
        self.decoders = Decoders(config.music.max_decodes, config.music.decode_wait_s, self.metrics.set_decodes)
        # Whether this process cleans up this round; in a cluster only one does (web/cluster.py sets it).
        self.cleanup_turn: Callable[[], Awaitable[bool]] = _always
        self.beds = BedMaker(self._decode_for_bed, self._forget_audio, self.rng)
        self._bed_tracks: dict[str, set[str]] = {}  # per channel: the stored tracks its beds play
        self.scheduler = Scheduler(self, config.schedule, clock)

    async def start(self) -> None:
        if not self.clustered:  # in a cluster, connections of a process that died are closed by cleanup
            await self.store.close_stale_connections(self.clock())
            for row in await self.store.channels():
                await self.runner(row.name)
        self._cleanup_task = asyncio.create_task(self._cleanup_loop(), name="cleanup")
        if self.config.schedule:
            self._spawn(self.scheduler.run())

    def clock_moved(self) -> None:
        """The clock was stepped (a test's clock; see web.app.create_app): every channel and the schedule
        read it again now instead of when their waits, timed on the clock before the step, run out."""
        for runner in self.runners.values():
            runner.clock_moved()
        self.scheduler.clock_moved()

    async def stop(self) -> None:
        self._stopping = True  # no new background work (repeat copies, auto-DJ tracks) from here on
        if self._cleanup_task:
            self._cleanup_task.cancel()
            await asyncio.gather(self._cleanup_task, return_exceptions=True)
        await asyncio.gather(*(dj.close() for dj in self.autodjs.values()))
        await self._end_background()
        await asyncio.gather(*(r.stop() for r in self.runners.values()))
        await self._end_background()  # steps the runners finished as they stopped may have started more
        await self.synthesis.close()
        await self.delivery.close()

    async def runner(self, name: str) -> ChannelRunner:
        """The channel's runner, loaded from the database on first use (the CLI may have just made it)."""
        if name in self.runners:
            return self.runners[name]
        if self.clustered:
            await self.channel_id(name)  # 404 for a channel that does not exist at all
            raise NotHere(name)
        async with self._loading:
            if name not in self.runners:
                await self._load(name)
        return self.runners[name]

    async def channel_row(self, name: str):  # noqa: ANN201
        """The channel's row (id, style, privacy), or NotFound."""
        _check_name(name)
        row = await self.store.channel(name)
        if row is None:
            raise _no_channel(name)
        return row

    async def channel_id(self, name: str) -> int:
        """The channel's id, or NotFound: cheaper than its row, for what only needs to know it exists."""
        _check_name(name)
        channel_id = await self.store.channel_id(name)
        if channel_id is None:
            raise _no_channel(name)
        return channel_id

    async def _load(self, name: str, lease: Lease | None = None) -> None:
        row = await self.channel_row(name)
        channel = Channel(name, self.config.timeline_config())
        channel.may_stream = self._may_stream
        runner = ChannelRunner(
            channel, row.id, self.store, self.maker, self.clock, self.publish, partial(self.audience, name)
        )
        runner.lease = lease
        runner.on_lost = lambda lost: self.on_lost(lost.name)
        runner.after_commit.append(self._after_commit)
        if row.style == "radio" and self.config.radio.autodj:
            music = Path(self.config.music.folder).resolve()
            where = f"on {name} ([music] folder {music}, or its {name}/ folder)"
            self.autodjs[name] = AutoDJ(partial(self._radio_files, name), partial(self._auto_track, name), where=where)
        try:
            await runner.start()
        except BaseException:
            await runner.stop()
            if (dj := self.autodjs.pop(name, None)) is not None:
                await dj.close()
            raise
        self.runners[name] = runner
        epoch = f" (epoch {lease.epoch})" if lease else ""
        log.info("channel %s on the air%s%s", name, epoch, " with the auto-DJ" if name in self.autodjs else "")
        self._after_commit(runner, [])

    # -- ownership in a cluster --------------------------------------------------------

    async def adopt(self, name: str, lease: Lease) -> None:
        """Start running a channel this process now holds the lease of, restored as at a restart."""
        async with self._loading:
            if name not in self.runners:
                await self._load(name, lease)

    async def let_go(self, name: str) -> None:
        """Stop running a channel at once: another process may run it from now on."""
        async with self._loading:
            runner = self.runners.pop(name, None)
            dj = self.autodjs.pop(name, None)
            if dj is not None:
                await dj.close()
            if runner is not None:
                runner.lost = True  # nothing more is written or announced under the old lease
                await runner.stop()
                log.info("channel %s handed over", name)

    def on_air(self) -> set[str]:
        """Channels run here that have something on the air or waiting (not handed over to rebalance)."""
        return {name for name, runner in self.runners.items() if runner.channel.line}

    def _may_stream(self, request: Request) -> bool:
        """Whether the engine can make one more request's sentences as fast as they play."""
        if request.kind == "track":
            return True  # segments are read from disk, not synthesized
        return self.streaming_count() < self.synthesis.live_capacity()

    def streaming_count(self) -> int:
        """Narrations on the air whose sentences are still being synthesized, across all channels."""
        return sum(1 for r in self.runners.values() for q in r.channel.streaming() if q.kind != "track")

    # -- repeat and the auto-DJ, run after every change of a channel ---------------------

    def _after_commit(self, runner: ChannelRunner, events: list) -> None:
        self._forget_beds_gone(runner)
        if self._stopping:
            return
        if runner.channel.repeat != RepeatMode.OFF:
            for event in events:
                if isinstance(event, RequestPlaced):
                    self._spawn(self._repeat(runner, event.request))
        if (autodj := self.autodjs.get(runner.name)) is not None and runner.name in self.runners:
            autodj.poke(runner.channel.needs_filler)

    async def _end_background(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _spawn(self, work) -> None:  # noqa: ANN001
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._finished_background)

    def _finished_background(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    async def _repeat(self, runner: ChannelRunner, original: Request) -> None:
        copy = await self._copy(runner.name, original, repeat_of=original.request_id)
        await runner.submit(copy, partial(runner.channel.insert_repeat, original, copy))

    async def _copy(self, name: str, original: Request, repeat_of: str | None = None) -> Request:
        """A new request with the same audio source (a track shares the original's audio)."""
        copy = Request(
            new_id(),
            name,
            original.text,
            list(original.sentences),
            self.clock(),
            kind=original.kind,
            title=original.title,
            artist=original.artist,
            duration_ms=original.duration_ms,
            auto=original.auto,
            repeat_of=repeat_of,
            voice=original.voice,
        )
        if original.kind == "track":
            await self.audio.share_track(original.request_id, copy.request_id)
        return copy

    def _radio_files(self, name: str) -> list[Path]:
        music = self.config.music
        return radio_files(Path(music.folder), name, music.ambience_folder, set(self.runners) - {name})

    async def _auto_track(self, name: str, path: Path) -> None:
        track, _ = await self.add_track(name, path, path.name, auto=True)
        runner = self.runners[name]
        self._auto_count[name] = count = self._auto_count.get(name, 0) + 1
        text = self._announcement(name, track, count)
        if text and runner.channel.now_playing() not in (None, track):
            speech = Request(new_id(), name, text, split_sentences(text), self.clock(), auto=True)
            await runner.submit(speech, partial(runner.channel.insert_before, speech, track))

    def _announcement(self, name: str, track: Request, count: int) -> str:
        """What to say before an auto-DJ track: the station's name every so often, and/or what comes next."""
        radio = self.config.radio
        parts = []
        if radio.station_id_every and count % radio.station_id_every == 0:
            parts.append(f"You are listening to {name.replace('-', ' ')}.")
        if radio.announce_next:
            parts.append(f"Up next: {track.title}" + (f", by {track.artist}." if track.artist else "."))
        return " ".join(parts)

    # -- queue controls ----------------------------------------------------------------

    async def move(self, name: str, request_id: str, position: object) -> None:
        runner = await self.runner(name)
        await self._request_in(runner, request_id)
        if isinstance(position, bool) or not isinstance(position, int):
            raise BadInput(f'expected "position" to be a whole number, got {position!r}'[:200])
        await runner.apply(partial(_guarded, runner.channel.move, request_id, position))

    async def shuffle(self, name: str) -> None:
        runner = await self.runner(name)
        await runner.apply(partial(runner.channel.shuffle, self.rng))

    async def set_repeat(self, name: str, mode: object) -> None:
        runner = await self.runner(name)
        if not isinstance(mode, str) or mode not in {m.value for m in RepeatMode}:
            raise BadInput(f"expected repeat mode 'off', 'one' or 'all', got {mode!r}"[:200])
        await runner.apply(lambda now: runner.channel.set_repeat(RepeatMode(mode)))

    # -- the bed ---------------------------------------------------------------------------

    async def set_bed(self, name: str, body: dict) -> Bed:
        """Make the bed a producer asked for and start it (crossfading with the one before). Cancelled
        while its files decode, it leaves nothing; once made, it goes on the air."""
        runner = await self.runner(name)
        wanted = bed_request(body, Path(self.config.music.folder))
        bed = await self.beds.make(runner.name, wanted, runner.maker, self.clock())
        return await asyncio.shield(self._start_bed(runner, bed))

    async def _start_bed(self, runner: ChannelRunner, bed: Bed) -> Bed:
        try:
            await runner.apply(partial(runner.channel.set_bed, bed))
        except BaseException:
            for track in bed.tracks:
                await asyncio.shield(self._forget_audio(track.request_id))
            raise
        return runner.channel.bed

    async def stop_bed(self, name: str, body: dict) -> Bed:
        """Fade the bed out (over `fade_ms`, else its own fade-in's length); returns it, fading."""
        runner = await self.runner(name)
        playing = runner.channel.bed
        fade = fade_ms(body, playing.fade_in_ms if playing else 0)
        events = await runner.apply(partial(_guarded, runner.channel.stop_bed, fade))
        return events[0].stopped

    async def _decode_for_bed(self, channel: str, request_id: str, source: Path, fallback_title: str) -> TrackInfo:
        async with self.decoders.turn(channel, patient=False):
            return await self._decode(request_id, source, fallback_title)

    def _forget_beds_gone(self, runner: ChannelRunner) -> None:
        """The audio of beds that are over (faded out, or replaced before they began) is deleted."""
        now = tracks_of(runner.channel.bed, runner.channel.fading_beds)
        gone = self._bed_tracks.get(runner.name, set()) - now
        self._bed_tracks[runner.name] = now
        for request_id in gone:
            self._spawn(self._forget_audio(request_id))

    async def pause(self, name: str) -> ChannelPaused:
        runner = await self.runner(name)
        events = await runner.apply(partial(_guarded, runner.channel.pause))
        return events[0]

    async def resume(self, name: str) -> ChannelResumed:
        runner = await self.runner(name)
        events = await runner.apply(partial(_guarded, runner.channel.resume))
        return events[0]

    async def submit(
        self, name: str, text: object, over: object = False, open_: object = False, voice: object = None
    ) -> tuple[Request, int]:
        """Queue narration; `over`: on the air at once over the track playing, if one is (talk-over);
        `open_`: more text will be appended (`append`), and the text so far may be empty; `voice`: a
        configured voice, else the default one."""
        runner = await self.runner(name)
        voice = self.voices.check(voice)
        for key, value in (("over", over), ("open", open_)):
            if not isinstance(value, bool):
                raise BadInput(f'expected "{key}" to be true or false, got {value!r}'[:200])
        self._check_text(text, 0)
        if open_:
            sentences, tail = split_complete(text, self.config.limits.max_sentence_chars)
            writing = Writing(tail, tuple(self._split(tail)), self.clock())
        else:
            sentences, writing = self._split(text), None
            if not sentences:
                raise BadInput("expected text with something to speak (letters or digits), got none")
        self._check_sentences(len(sentences) + len(writing.tail_sentences if writing else ()), 0)
        self._check_room(runner)
        request = Request(new_id(), name, text, sentences, self.clock(), over=over, writing=writing, voice=voice)
        return request, await runner.submit(request, max_line=self.config.limits.max_queue)

    async def append(self, name: str, request_id: str, text: object, final: object = False) -> Request:
        """More text for an open narration; `final` closes it (what is left unfinished is spoken as it is)."""
        runner = await self.runner(name)
        request = await self._request_in(runner, request_id)  # 404 for ids this channel never had
        if not isinstance(final, bool):
            raise BadInput(f'expected "final" to be true or false, got {final!r}'[:200])
        await runner.apply(partial(self._append_step, runner.channel, request_id, text, final))
        return request

    def _append_step(self, channel: Channel, request_id: str, text: object, final: bool, now_ms: int) -> list:
        """Checked inside the channel's step: the request cannot close or end between check and append."""
        request = channel.find_request(request_id)
        if request is None or request.state in FINAL_REQUEST_STATES:
            state = request.state if request else "finished"
            raise Conflict(f"request {request_id} is {state}; it takes no more text")
        if request.writing is None:
            raise Conflict(f"request {request_id} is closed (or was never open); it takes no more text")
        self._check_text(text, len(request.text))
        pending = request.writing.tail + text
        if final:
            sentences, tail = self._split(pending), ""
        else:
            sentences, tail = split_complete(pending, self.config.limits.max_sentence_chars)
        tail_sentences = self._split(tail)
        self._check_sentences(len(sentences) + len(tail_sentences), len(request.sentences))
        return channel.append(request_id, text, sentences, (tail, tail_sentences), final, now_ms)

    def _check_text(self, text: object, before: int) -> None:
        """Text a producer sends: a string, valid Unicode, and not past the length limit with what came before."""
        limit = self.config.limits.max_text_chars
        if not isinstance(text, str):
            raise BadInput(f'expected "text" to be a string, got {type(text).__name__}')
        if not text.isascii() and not _encodable(text):
            raise BadInput('expected "text" to be valid Unicode, got an unpaired surrogate escape (\\ud800-\\udfff)')
        if "\x00" in text:  # PostgreSQL cannot store it, and nothing speaks it
            raise BadInput('expected "text" without NUL characters (\\u0000)')
        if before + len(text) > limit:
            had = f" (with the {before} it has)" if before else ""
            raise BadInput(f"expected at most {limit} characters of text, got {before + len(text)}{had}")

    def _check_sentences(self, count: int, before: int) -> None:
        """Each sentence is a chunk to make, encode and announce: a text of thousands of one-word
        sentences would cost far more than its length says."""
        limit = self.config.limits.max_sentences
        if before + count > limit:
            by = " with this append" if before else ""
            raise BadInput(f"expected at most {limit} sentences in one request, got {before + count}{by}")

    def _split(self, text: str) -> list[str]:
        return split_sentences(text, self.config.limits.max_sentence_chars)

    async def add_track(self, name: str, source: Path, filename: str, auto: bool = False) -> tuple[Request, int]:
        """Decode a music file into a track request and queue it; nothing is left behind if it is refused."""
        runner = await self.runner(name)
        self._check_room(runner)  # before the decode too: a full line need not cost one
        request_id = new_id()
        try:
            async with self.decoders.turn(name, patient=auto):
                info = await self._decode(request_id, source, Path(filename).stem or "Untitled")
        except BaseException:
            await asyncio.shield(self._forget_audio(request_id))
            raise
        title, artist = one_line(info.title) or "Untitled", one_line(info.artist or "") or None
        request = Request(
            request_id,
            name,
            f"{artist} - {title}" if artist else title,
            [title] * info.segments,
            self.clock(),
            kind="track",
            title=title,
            artist=artist,
            duration_ms=info.duration_ms,
            auto=auto,
        )
        try:
            return request, await runner.submit(request, max_line=self.config.limits.max_queue)
        except QueueFull:  # the line filled up while this one was decoding
            await self._forget_audio(request_id)
            raise

    async def _decode(self, request_id: str, source: Path, fallback_title: str) -> TrackInfo:
        music = self.config.music
        limits = DecodeLimits(
            music.max_track_minutes * 60, music.decode_timeout_s, music.decode_memory_mb * 1024 * 1024
        )
        master = self.audio.decode_path(request_id)
        info = await prepare_track(source, master, music.target_lufs, limits, fallback_title)
        await self.audio.keep_track(request_id, info.segments)
        return info

    async def _forget_audio(self, request_id: str) -> None:
        await self.audio.delete_request(request_id)

    def music_file(self, relative: object) -> Path:
        """A file inside the configured music folder; anything else is refused."""
        return music_file(Path(self.config.music.folder), relative)

    def _check_room(self, runner: ChannelRunner) -> None:
        limit = self.config.limits.max_queue
        if len(runner.channel.line) + len(runner.channel.overlay) >= limit:  # talk-over waits too
            raise QueueFull(f"channel {runner.name!r} already has {limit} requests waiting; try again later")

    async def cancel(self, name: str, request_id: str, skip: bool) -> bool:
        """Skip the request on the air (skip=True) or cancel a queued one (skip=False).

        Returns whether audio was on the air. The checks run inside the channel's step, so the
        request cannot move on between being checked and being stopped.
        """
        runner = await self.runner(name)
        await self._request_in(runner, request_id)  # 404 for ids this channel never had
        events = await runner.apply(partial(_cancel_step, runner.channel, request_id, skip))
        return any(getattr(e, "skipped", False) for e in events)

    async def retry(self, name: str, request_id: str) -> tuple[Request, int]:
        """Queue a failed or cancelled request's text again, as a new request."""
        runner = await self.runner(name)
        request = await self._request_in(runner, request_id)
        if request.state not in (RequestState.FAILED, RequestState.CANCELLED):
            raise Conflict(f"expected a failed or cancelled request to retry, but {request_id} is {request.state}")
        if request.kind != "track":
            return await self.submit(
                name, request.text, voice=request.voice if request.voice in self.voices.named else None
            )
        self._check_room(runner)
        try:
            copy = await self._copy(name, request)
        except FileNotFoundError:
            raise Conflict(f"the audio of track {request_id} is no longer stored; upload it again") from None
        return copy, await runner.submit(copy, max_line=self.config.limits.max_queue)

    async def _request_in(self, runner: ChannelRunner, request_id: str) -> Request:
        request = runner.channel.find_request(request_id) or await self.store.request(request_id)
        if request is None or request.channel != runner.name:
            raise NotFound(f"no playback request {request_id!r} on channel {runner.name!r}")
        return request

    def learn_chunk(self, chunk_id: str, request_id: str, channel: str) -> None:
        """Remember which request and channel a chunk belongs to (facts that never change), so that
        fetches of chunks run elsewhere need no database read, and work while it is away."""
        self._chunk_facts[chunk_id] = (request_id, channel)
        self._chunk_facts.move_to_end(chunk_id)
        if len(self._chunk_facts) > CHUNK_FACTS:
            self._chunk_facts.popitem(last=False)

    async def chunk_owner(self, chunk_id: str) -> tuple[str, str]:
        """The request id and channel name of a chunk, or NotFound."""
        if (facts := self._chunk_facts.get(chunk_id)) is not None:
            return facts
        chunk = await self.find_chunk(chunk_id)
        request = await self.find_request(chunk.request_id)
        self.learn_chunk(chunk_id, request.request_id, request.channel)
        return request.request_id, request.channel

    async def find_request(self, request_id: str) -> Request:
        for runner in self.runners.values():
            if found := runner.channel.find_request(request_id):
                return found
        if (stored := await self.store.request(request_id)) is not None:
            return stored
        raise NotFound(f"no playback request {request_id!r}")

    async def find_chunk(self, chunk_id: str) -> Chunk:
        for runner in self.runners.values():
            if found := runner.channel.find_chunk(chunk_id):
                return found
        if (stored := await self.store.chunk(chunk_id)) is not None:
            return stored
        raise NotFound(f"no audio chunk {chunk_id!r}")

    def runner_of(self, request: Request) -> ChannelRunner | None:
        return self.runners.get(request.channel)

    async def cleanup(self) -> dict[str, int]:
        result = await purge(self.store, self.audio, self._retained_from_ms(), orphan_grace_s(self.config.music))
        for runner in self.runners.values():
            runner.channel.forget(result.request_ids)
        return result.summary()

    def _retained_from_ms(self) -> int:
        return self.clock() - int(self.config.cleanup.retention_days * 86_400_000)

    def _forget_expired(self) -> None:
        """Drop from the history of the channels run here what cleanup purges (another process purged it)."""
        before_ms = self._retained_from_ms()
        for runner in self.runners.values():
            recent = runner.channel.recent
            runner.channel.forget({r.request_id for r in recent if r.finished_at_ms and r.finished_at_ms < before_ms})

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.cleanup.interval_s)
            try:
                if await self.cleanup_turn():
                    summary = await self.cleanup()
                else:  # another process of the cluster purged
                    self._forget_expired()
                    summary = (await sweep_local(self.audio, orphan_grace_s(self.config.music))).summary()
                if summary["requests"] or summary["orphans"]:
                    log.info("cleanup: %s", summary)
                await asyncio.to_thread(release_free_memory)  # what bursts of listeners left behind
            except Exception:  # cleanup must never take the server down; it retries next round
                log.exception("cleanup failed")


async def _always() -> bool:
    return True


def _check_name(name: str) -> None:
    if not valid_channel_name(name):
        raise NotFound(f"expected a channel name like 'campaign-1', got {name[:80]!r}")


def _no_channel(name: str) -> NotFound:
    return NotFound(f"no channel named {name!r}; create it with 'broadcaster channel create {name}'")
