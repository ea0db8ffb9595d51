"""What listeners' speakers play, recorded, and where in it each moment of each chunk was heard.

A PulseAudio daemon of our own (Debian's `pulseaudio`, its socket in a temporary directory, no
configuration read): one null sink, "mix", with a channel per listener, and a mono remap sink per
listener ("listener0", ...) onto its channel. A browser started with PULSE_SINK=listenerN plays
into channel N. The Recorder reads mix's monitor through libpulse-simple and notes the wall-clock
time of every read, so every recorded sample gets the wall-clock time it was played at; the server
places chunks on the same machine's wall clock.

Then `follow` finds, piece by piece, where a chunk's audio is in a listener's channel: for each
stretch of the chunk, the moment it sounded minus the moment the timeline says it should have.
The tone engine's sentences are glides, so every stretch is unique; speech works the same way.

Used by tests/browser/test_sync_output.py and bench/sync_output.py.
"""

import asyncio
import ctypes
import multiprocessing
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from chromium import FLAGS

from tts.encode import decode_flac

RATE = 48_000  # the rig's default; bench/sync_output.py --rate chooses another (docs/performance.md)
FRAGMENT_MS = 2  # the recorder asks for reads this small; the mix sink then renders this far ahead
REALTIME_PRIORITY = 6  # SCHED_RR: above PulseAudio's sink thread (5), below the browsers' audio threads (8)
TIE = 0.002  # correlations this close count as equally good matches (a nearly periodic stretch, a period off)


def pulseaudio_binaries() -> tuple[str, str] | None:
    daemon, control = shutil.which("pulseaudio"), shutil.which("pactl")
    return None if daemon is None or control is None else (daemon, control)


class PulseServer:
    """A PulseAudio daemon with one sink per listener, all recorded together."""

    def __init__(self, work: Path, listeners: int, rate: int = RATE):
        self.listeners = listeners
        self.rate = rate  # the mix's sample rate, which every browser's output then runs at
        self.runtime = work / "pulse"
        self.socket = self.runtime / "native"
        self.proc: subprocess.Popen | None = None

    @property
    def server(self) -> str:
        return f"unix:{self.socket}"

    def start(self) -> None:
        self.runtime.mkdir(parents=True, exist_ok=True)
        daemon, _ = pulseaudio_binaries()
        aux = ",".join(f"aux{i}" for i in range(self.listeners))
        modules = [
            f"module-native-protocol-unix socket={self.socket} auth-anonymous=1",
            f"module-null-sink sink_name=mix channels={self.listeners} channel_map={aux} rate={self.rate}",
            *(
                f"module-remap-sink sink_name=listener{i} master=mix channels=1 "
                f"master_channel_map=aux{i} channel_map=mono remix=no"
                for i in range(self.listeners)
            ),
        ]
        args = [daemon, "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--disallow-exit"]
        args += ["--log-target=stderr", "--log-level=error"]
        for module in modules:
            args += ["-L", module]
        with open(self.runtime / "pulseaudio.log", "wb") as log:
            self.proc = subprocess.Popen(args, env=self._env(), stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while self.pactl("info", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PulseAudio did not start: {(self.runtime / 'pulseaudio.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def _env(self) -> dict[str, str]:
        return os.environ | {"XDG_RUNTIME_DIR": str(self.runtime), "HOME": str(self.runtime)}

    def client_env(self, listener: int) -> dict[str, str]:
        """The environment of a program that plays as `listener` (a browser: all of its pages)."""
        return self._env() | {"PULSE_SERVER": self.server, "PULSE_SINK": f"listener{listener}"}

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        _, control = pulseaudio_binaries()
        env = self._env() | {"PULSE_SERVER": self.server}
        return subprocess.run([control, *args], env=env, capture_output=True, text=True, check=check, timeout=10)

    async def stall(self, listener: int, ms: int) -> tuple[float, float]:
        """Stop `listener`'s output for about `ms` (its sink suspended, as when a device stops being
        read); returns the wall-clock times it was suspended and resumed."""
        await asyncio.to_thread(self.pactl, "suspend-sink", f"listener{listener}", "1")
        began = time.time()
        await asyncio.sleep(ms / 1000)
        await asyncio.to_thread(self.pactl, "suspend-sink", f"listener{listener}", "0")
        return began, time.time()

    def mix_latency_s(self) -> float:
        """How far ahead of the moment it plays the mix sink renders (its configured latency)."""
        sinks = self.pactl("list", "sinks").stdout
        block = sinks.split("Name: mix", 1)[1]
        return int(re.search(r"configured (\d+) usec", block).group(1)) / 1e6

    def recorder(self) -> "Recorder":
        return Recorder(self.server, self.listeners, self.rate)

    def realtime_audio(self) -> int:
        """Raise the threads that carry audio to the sinks to realtime priority, as on a machine tuned
        for audio: in each other process playing here (a browser's audio service) its main thread and
        its libpulse threads, which take what the browser's audio thread rendered and feed it to
        PulseAudio, and the daemon's main thread, which takes in every client's audio. As they come, all
        of them run at normal priority beside everything else, and a busy machine starves them: the
        output underruns again and again while the browser's own audio thread, realtime already, sees
        nothing wrong (docs/performance.md, "Where the storms come from"). This process (the recorder)
        is left as it is. Returns how many threads run at realtime priority now; 0 where this process may not
        raise them (no CAP_SYS_NICE)."""
        found = re.findall(r'application\.process\.id = "(\d+)"', self.pactl("list", "clients").stdout)
        clients = {int(pid) for pid in found} - {os.getpid()}
        threads = [tid for pid in clients for tid in (pid, *_threads(pid, "threaded-ml"))]
        if self.proc is not None:
            threads.append(self.proc.pid)
        raised = 0
        for tid in threads:
            try:
                if os.sched_getscheduler(tid) != os.SCHED_RR:
                    os.sched_setscheduler(tid, os.SCHED_RR, os.sched_param(REALTIME_PRIORITY))
                raised += 1
            except ProcessLookupError:
                continue  # gone meanwhile (pactl itself is a client)
            except PermissionError:
                return 0
        return raised

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _threads(pid: int, name: str) -> list[int]:
    """The ids of the process's threads called `name`."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if (task / "comm").read_text().strip() == name:
                found.append(int(task.name))
        except OSError:
            continue  # ended meanwhile
    return found


class PipeWireServer(PulseServer):
    """The same sinks on PipeWire (Debian's `pipewire`, `wireplumber` and `pipewire-pulse`, with a
    D-Bus session bus of their own), as most Linux desktops now play: browsers and the recorder
    speak the PulseAudio protocol to `pipewire-pulse`."""

    def __init__(self, work: Path, listeners: int, rate: int = RATE):
        super().__init__(work, listeners, rate)
        self.socket = self.runtime / "pulse" / "native"
        self.procs: list[subprocess.Popen] = []

    def _env(self) -> dict[str, str]:
        bus = f"unix:path={self.runtime / 'bus'}"
        return super()._env() | {"DBUS_SESSION_BUS_ADDRESS": bus, "PIPEWIRE_RUNTIME_DIR": str(self.runtime)}

    def start(self) -> None:
        self.runtime.mkdir(parents=True, exist_ok=True)
        bus = f"unix:path={self.runtime / 'bus'}"
        commands = [
            ["dbus-daemon", "--session", "--nofork", f"--address={bus}"],
            ["pipewire"],
            ["wireplumber"],
            ["pipewire-pulse"],
        ]
        missing = [command[0] for command in commands if shutil.which(command[0]) is None]
        if missing:
            raise RuntimeError(f"not installed: {', '.join(missing)} (apt-get install pipewire-pulse wireplumber)")
        for command in commands:
            with open(self.runtime / f"{command[0]}.log", "wb") as log:
                self.procs.append(subprocess.Popen(command, env=self._env(), stdout=log, stderr=log))
            time.sleep(0.5)
        deadline = time.monotonic() + 15
        while self.pactl("info", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("pipewire-pulse did not start")
            time.sleep(0.05)
        aux = ",".join(f"aux{i}" for i in range(self.listeners))
        self.pactl("load-module", "module-null-sink", "sink_name=mix", f"channels={self.listeners}",
                   f"channel_map={aux}", f"rate={self.rate}")  # fmt: skip
        for i in range(self.listeners):
            self.pactl("load-module", "module-remap-sink", f"sink_name=listener{i}", "master=mix", "channels=1",
                       f"master_channel_map=aux{i}", "channel_map=mono", "remix=no")  # fmt: skip

    def mix_latency_s(self) -> float:
        return 0.0  # a PipeWire null sink is its own driver: what the monitor reads, it plays then

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


class Listeners:
    """Listener pages as people open them, each in its own Chromium playing into its own sink."""

    def __init__(
        self,
        playwright,
        pulse: PulseServer,
        page_url: str,
        chromium: str,
        init_script: str = "",
        realtime: bool = False,
    ):
        """`init_script`: run in each page before its own scripts (to set what a browser remembers);
        `realtime`: each browser's output to PulseAudio runs at realtime priority (`PulseServer.realtime_audio`)."""
        self.playwright, self.pulse, self.page_url, self.chromium = playwright, pulse, page_url, chromium
        self.init_script = init_script
        self.realtime = realtime
        self.realtime_threads = 0  # how many threads of the audio path run at realtime priority
        self.pages: dict[int, object] = {}
        self.browsers: list = []

    async def open(self, listener: int):
        """Open the page as `listener`, tune in, and wait until it knows both clocks."""
        browser = await self.playwright.chromium.launch(
            executable_path=self.chromium,
            args=FLAGS,
            headless=True,
            env=self.pulse.client_env(listener),
            ignore_default_args=["--mute-audio"],  # Playwright's default: the page would play into nothing
        )
        self.browsers.append(browser)
        page = await browser.new_page(bypass_csp=True)
        if self.init_script:
            await page.add_init_script(self.init_script)
        await page.goto(self.page_url)
        await page.click("#tune")
        await page.wait_for_function(
            "window.broadcaster.socket.clock.samples.length >= 8 && window.broadcaster.output?.ready", timeout=20_000
        )
        if self.realtime:  # its output stream is open now
            self.realtime_threads = await asyncio.to_thread(self.pulse.realtime_audio)
        self.pages[listener] = page
        return page

    async def open_recorded(self, listeners: list[int], settle_s: float = 5.0) -> "Recorder":
        """Open these listeners' pages and start recording them; returns once the recorder's first
        second (not counted towards its clock) and the pages' first seconds of output (not yet
        steady: docs/performance.md) are over."""
        for listener in listeners:
            await self.open(listener)
        recorder = self.pulse.recorder()
        recorder.start()
        await asyncio.sleep(settle_s)
        return recorder

    async def close(self) -> None:
        for browser in self.browsers:
            await browser.close()


async def stop_recording(recorder: "Recorder", pulse: PulseServer) -> "Recording":
    """The recording so far. In a thread, as every analysis of it is in the tests: a test server runs
    on the test's event loop, and a loop held still for most of its 10 s server lease stops the
    whole test process (as a server that lost its lease does)."""
    return await asyncio.to_thread(lambda: recorder.stop(pulse.mix_latency_s()))


async def chunk_audio(http, base_url: str, chunk_id: str, rate: int = RATE) -> np.ndarray:
    """The chunk's audio as the server stored it (its FLAC), at the recording's `rate` (`follow`
    stretches it to the rate the recording's clock heard it at)."""
    async with http.get(f"{base_url}/api/audio/chunks/{chunk_id}", params={"format": "flac"}) as resp:
        resp.raise_for_status()
        pcm = await decode_flac(await resp.read())
    return resample(pcm.samples.reshape(len(pcm.samples), -1)[:, 0], pcm.sample_rate, rate)


# The speaker tests' channel: sentences long enough to follow through a recording, the lead long
# enough for three or four browsers on two cores.
SPEAKER_CONFIG = {
    "tts": {"tone_ms_per_char": 55, "tone_delay_ms": 20},
    "timeline": {"lead_ms": 800, "min_lead_ms": 800, "sentence_gap_ms": 250, "request_gap_ms": 600},
}

# -- recording ---------------------------------------------------------------------------------------


class _SampleSpec(ctypes.Structure):
    _fields_ = [("format", ctypes.c_int), ("rate", ctypes.c_uint32), ("channels", ctypes.c_uint8)]


class _ChannelMap(ctypes.Structure):
    _fields_ = [("channels", ctypes.c_uint8), ("map", ctypes.c_int * 32)]


class _BufferAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("maxlength", "tlength", "prebuf", "minreq", "fragsize")]


_S16LE, _PLAYBACK, _RECORD, _AUX0 = 3, 1, 2, 12  # pa_sample_format, two pa_stream_directions, PA_CHANNEL_POSITION_AUX0
_DEFAULT = 0xFFFFFFFF


def _libpulse_simple() -> ctypes.CDLL:
    lib = ctypes.CDLL("libpulse-simple.so.0")
    lib.pa_simple_new.restype = ctypes.c_void_p
    for name in ("pa_simple_read", "pa_simple_write"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int)]
    lib.pa_simple_get_latency.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    lib.pa_simple_get_latency.restype = ctypes.c_uint64
    lib.pa_simple_free.argtypes = [ctypes.c_void_p]
    return lib


def clicks_at_reported_times(pulse: "PulseServer", listener: int, seconds: float) -> list[float]:
    """Play clicks into `listener`'s sink as a plain PulseAudio client, each written just after asking
    the stream's latency (when the next sample written will be heard); returns those wall-clock times.
    Blocks while it plays. The recording should hear each click then: a check of the rig's timing
    against PulseAudio's own account of it."""
    return _clicks(pulse.server, pulse.rate, listener, seconds)


async def clicks_in_own_process(pulse: "PulseServer", listener: int, seconds: float) -> list[float]:
    """`clicks_at_reported_times` from a process of its own: in a busy one (a server, a browser's
    driver) another thread may hold the interpreter between reading the clock and asking the latency,
    and each report would be off by as long."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, _clicks, pulse.server, pulse.rate, listener, seconds)


def _clicks(server: str, rate: int, listener: int, seconds: float) -> list[float]:
    lib = _libpulse_simple()
    block = rate // 100  # 10 ms a write
    # 100 ms buffered: a writer held up for less than that does not underrun, so each report holds
    attr = _BufferAttr(_DEFAULT, block * 2 * 10, _DEFAULT, _DEFAULT, _DEFAULT)
    spec, error = _SampleSpec(_S16LE, rate, 1), ctypes.c_int()
    stream = lib.pa_simple_new(
        server.encode(), b"rig check", _PLAYBACK, f"listener{listener}".encode(), b"clicks",
        ctypes.byref(spec), None, ctypes.byref(attr), ctypes.byref(error),
    )  # fmt: skip
    if not stream:
        raise RuntimeError(f"pa_simple_new failed ({error.value})")
    silence, click = np.zeros(block, dtype="<i2"), np.zeros(block, dtype="<i2")
    click[:4] = 20_000
    reported: list[float] = []
    try:
        for n in range(int(seconds * 100)):
            data = silence
            if n % 50 == 49:  # every half second, once the stream runs
                latency_us = lib.pa_simple_get_latency(stream, ctypes.byref(error))
                if latency_us == 2**64 - 1:  # (pa_usec_t) -1
                    raise RuntimeError(f"pa_simple_get_latency failed ({error.value})")
                reported.append(time.time() + latency_us / 1e6)
                data = click
            if lib.pa_simple_write(stream, data.tobytes(), data.nbytes, ctypes.byref(error)) < 0:
                raise RuntimeError(f"pa_simple_write failed ({error.value})")
        time.sleep(0.2)  # the last blocks play out
    finally:
        lib.pa_simple_free(stream)
    return reported


def click_onsets(channel: np.ndarray, min_gap: int) -> np.ndarray:
    """The frames where clicks begin in a recorded channel: loud after at least `min_gap` quiet frames."""
    loud = np.nonzero(np.abs(channel.astype(np.int32)) > 3000)[0]
    return loud[np.insert(np.diff(loud) > min_gap, 0, True)]


def clicks_off_ms(recording: "Recording", channel: int, reported: list[float]) -> list[float]:
    """How far from the time PulseAudio reported (`clicks_at_reported_times`) each click was heard,
    in ms (positive: later)."""
    onsets = click_onsets(recording.samples[:, channel], recording.rate // 20)
    heard = [recording.clock.time_of(frame) for frame in onsets]
    return [(min(heard, key=lambda h: abs(h - due)) - due) * 1000 for due in reported] if heard else []


class Recorder:
    """Reads every listener's channel of the mix, each read stamped with the wall-clock time."""

    def __init__(self, server: str, channels: int, rate: int = RATE):
        self.server, self.channels, self.rate = server, channels, rate
        self.blocks: list[bytes] = []
        self.reads: list[tuple[float, int]] = []  # (wall time of the read, frames recorded by then)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        if not self._opened.wait(10):
            raise RuntimeError("the recorder could not open the mix's monitor")
        if self._error:
            raise self._error

    def _run(self) -> None:
        lib = _libpulse_simple()
        spec = _SampleSpec(_S16LE, self.rate, self.channels)
        layout = _ChannelMap(self.channels)
        for i in range(self.channels):  # without the map, the monitor of an aux-channel sink records silence
            layout.map[i] = _AUX0 + i
        frame = 2 * self.channels
        fragment = self.rate * FRAGMENT_MS // 1000 * frame
        attr = _BufferAttr(_DEFAULT, _DEFAULT, _DEFAULT, _DEFAULT, fragment)
        error = ctypes.c_int()
        stream = lib.pa_simple_new(
            self.server.encode(), b"recorder", _RECORD, b"mix.monitor", b"what the listeners play",
            ctypes.byref(spec), ctypes.byref(layout), ctypes.byref(attr), ctypes.byref(error),
        )  # fmt: skip
        if not stream:
            self._error = RuntimeError(f"pa_simple_new failed ({error.value})")
            self._opened.set()
            return
        self._opened.set()
        buffer = ctypes.create_string_buffer(fragment)
        frames = 0
        try:
            while not self._stop.is_set():
                if lib.pa_simple_read(stream, buffer, fragment, ctypes.byref(error)) < 0:
                    raise RuntimeError(f"pa_simple_read failed ({error.value})")
                now = time.time()
                self.blocks.append(buffer.raw)
                frames += fragment // frame
                self.reads.append((now, frames))
        except BaseException as exc:
            self._error = exc
        finally:
            lib.pa_simple_free(stream)

    def stop(self, render_ahead_s: float) -> "Recording":
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._error:
            raise self._error
        samples = np.frombuffer(b"".join(self.blocks), dtype="<i2").reshape(-1, self.channels)
        return Recording(samples, sample_clock(self.reads, render_ahead_s, self.rate), self.rate)


@dataclass(frozen=True)
class SampleClock:
    """Wall-clock time of recorded frames: a line through anchors (frame, time), one every ANCHOR_S."""

    frames: np.ndarray
    times: np.ndarray

    @property
    def rate_hz(self) -> float:
        return float((self.frames[-1] - self.frames[0]) / (self.times[-1] - self.times[0]))

    def time_of(self, frame: float) -> float:
        return float(np.interp(frame, self.frames, self.times, left=np.nan, right=np.nan))

    def frame_at(self, wall_s: float) -> float:
        return float(np.interp(wall_s, self.times, self.frames, left=np.nan, right=np.nan))


ANCHOR_S = 2.0


def sample_clock(reads: list[tuple[float, int]], render_ahead_s: float, rate: int = RATE) -> SampleClock:
    """Frames to wall-clock time. A read that came late only makes its frames look later than they
    were, so within every ANCHOR_S the least delayed read is taken as the truth, against a line fitted
    through all of them (an output clock runs hundreds of ppm off the wall clock, and not always at
    the same rate: anchors follow it). The first second is left out: the monitor first hands over
    what the sink rendered before it was asked to render only a fragment ahead. A frame is read as
    soon as the sink renders it, which is `render_ahead_s` before it plays."""
    times = np.array([t for t, _ in reads])
    frames = np.array([n for _, n in reads], dtype=float)
    steady = times >= times[0] + 1.0
    times, frames = times[steady], frames[steady]
    slope, intercept = np.polyfit(frames, times, 1)
    residual = times - (intercept + slope * frames)
    block = ((times - times[0]) // ANCHOR_S).astype(int)
    anchor_frames, anchor_times = [], []
    for k in np.unique(block):
        members = np.nonzero(block == k)[0]
        best = members[np.argmin(residual[members])]
        anchor_frames.append(frames[best])
        anchor_times.append(intercept + slope * frames[best] + residual[best] + render_ahead_s)
    # The line carries the first and last anchors to the ends of the recording (and a minute past it).
    past = rate * 60.0
    anchor_times = [anchor_times[0] - anchor_frames[0] * slope, *anchor_times, anchor_times[-1] + past * slope]
    anchor_frames = [0.0, *anchor_frames, anchor_frames[-1] + past]
    return SampleClock(np.array(anchor_frames), np.array(anchor_times))


@dataclass
class Recording:
    samples: np.ndarray  # frames x listeners, int16
    clock: SampleClock
    rate: int = RATE  # nominal frames a second (the clock says how many there were)

    def channel(self, listener: int) -> np.ndarray:
        return self.samples[:, listener].astype(np.float64)


# -- finding chunks in the recording -----------------------------------------------------------------


def resample(samples: np.ndarray, rate_in: float, rate_out: float = RATE) -> np.ndarray:
    """Linear interpolation: enough to find audio by correlation, not to listen to."""
    duration = len(samples) / rate_in
    positions = np.arange(int(duration * rate_out)) * rate_in / rate_out
    return np.interp(positions, np.arange(len(samples)), samples.astype(np.float64))


def locate(signal: np.ndarray, piece: np.ndarray, lo: int, hi: int, near: float | None = None) -> tuple[float, float]:
    """Where in `signal` `piece` starts, searching starts lo..hi: (position, normalised correlation).

    A stretch of a tone matches almost as well one period early or late; of the places that match
    within TIE of the best, the one nearest `near` (where the previous stretch was) is taken."""
    lo, hi = max(0, lo), min(hi, len(signal) - len(piece))
    if hi <= lo:
        return float("nan"), 0.0
    region = signal[lo : hi + len(piece)]
    size = 1 << int(np.ceil(np.log2(len(region) + len(piece))))
    corr = np.fft.irfft(np.fft.rfft(region, size) * np.conj(np.fft.rfft(piece, size)), size)[: hi - lo]
    power = np.concatenate([[0.0], np.cumsum(region * region)])
    window = np.sqrt(np.maximum(power[len(piece) :][: hi - lo] - power[: hi - lo], 1e-9))
    score = corr / (window * np.linalg.norm(piece) + 1e-9)
    best = int(np.argmax(score))
    if near is not None:
        ties = np.nonzero(score >= score[best] - TIE)[0]
        best = int(ties[np.argmin(np.abs(ties + lo - near))])
        while 0 < best < len(score) - 1 and score[best + 1] > score[best]:
            best += 1  # up to the top of that peak
        while 0 < best < len(score) - 1 and score[best - 1] > score[best]:
            best -= 1
    shift = 0.0
    if 0 < best < len(score) - 1:  # the peak between samples
        a, b, c = score[best - 1], score[best], score[best + 1]
        if a - 2 * b + c < 0:
            shift = 0.5 * (a - c) / (a - 2 * b + c)
    return lo + best + shift, float(score[best])


@dataclass
class Heard:
    """One stretch of a chunk as one listener heard it."""

    chunk_id: str
    offset_ms: float  # where the stretch is in the chunk
    due_s: float  # when the timeline says it sounds (wall clock)
    heard_s: float  # when it sounded
    score: float  # how well it matched (1: exactly)

    @property
    def error_ms(self) -> float:
        return (self.heard_s - self.due_s) * 1000


@dataclass
class Follow:
    """How to follow a chunk through a recording."""

    piece_ms: int = 80  # the stretch looked for: long enough that only its true place matches well
    hop_ms: int = 20  # one every this often
    radius_ms: int = 400  # how far from the previous stretch's place to look (covers a stall)
    min_score: float = 0.97  # below this a stretch counts as not heard (a stretch only partly there scores ~0.9)


def follow(
    recording: Recording, listener: int, chunk_id: str, audio: np.ndarray, starts_at_ms: int, how: Follow | None = None
) -> list[Heard]:
    """Every audible stretch of the chunk (`audio` at the recording's rate), found in the listener's channel near where
    the previous one was: a shift (a stall, a restart) shows up as a change in error from one to the next."""
    how = how or Follow()
    signal = recording.channel(listener)
    # As heard: the page plays a second of audio in a second of the wall clock, which the recording's
    # clock fills with `rate` frames, up to a few hundred ppm off nominal. Matched at nominal, a stretch of a
    # glide would be off in pitch as well as time, and its true place would score no better than a
    # place a few periods off (which then won by chance: the "shifts" of 5-6 ms it reported).
    rate = recording.clock.rate_hz
    audio = resample(audio, recording.rate, rate)
    piece_n, hop_n, radius_n = (ms * recording.rate // 1000 for ms in (how.piece_ms, how.hop_ms, how.radius_ms))
    loud = 0.1 * np.max(np.abs(audio)) if len(audio) else 0
    expected_shift = None  # frames between where the timeline says and where it was heard, so far
    found: list[Heard] = []
    for offset in range(0, len(audio) - piece_n, hop_n):
        piece = audio[offset : offset + piece_n]
        if np.max(np.abs(piece)) < loud:
            continue  # too quiet to place (a pause, a fade)
        due_s = starts_at_ms / 1000 + offset / rate
        due_frame = recording.clock.frame_at(due_s)
        centre = due_frame + (expected_shift or 0)
        near = None if expected_shift is None else centre
        position, score = locate(signal, piece, int(centre - radius_n), int(centre + radius_n), near)
        if score < how.min_score or np.isnan(position):
            continue
        at = int(round(position))
        if not 0.5 <= np.linalg.norm(signal[at : at + piece_n]) / np.linalg.norm(piece) <= 2.0:
            continue  # the stretch is only partly there (a fade-in mid-chunk, a cut): it cannot place it
        expected_shift = position - due_frame
        found.append(Heard(chunk_id, round(offset * 1000 / rate, 3), due_s, recording.clock.time_of(position), score))
    return found


def clicks(recording: Recording, listener: int, threshold: float = 1500.0) -> list[float]:
    """Wall-clock times where the listener's output jumps between samples as no glide does (a hard
    cut): a tone-engine glide at full level changes its second difference by at most ~250."""
    signal = recording.channel(listener)
    jumps = np.abs(np.diff(signal, 2))
    frames = np.nonzero(jumps > threshold)[0]
    times: list[float] = []
    for frame in frames:
        at = recording.clock.time_of(frame)
        if not times or at - times[-1] > 0.05:
            times.append(at)
    return times


# -- summaries -------------------------------------------------------------------------------------


def skews_ms(heard: dict[int, list[Heard]], listeners: list[int] | None = None) -> list[float]:
    """For each stretch heard by two or more of `listeners`: the spread of the moments they heard it."""
    by_stretch: dict[tuple[str, float], list[float]] = {}
    for listener, found in heard.items():
        if listeners is None or listener in listeners:
            for h in found:
                by_stretch.setdefault((h.chunk_id, h.offset_ms), []).append(h.heard_s)
    return [(max(times) - min(times)) * 1000 for times in by_stretch.values() if len(times) > 1]


def together_again_ms(
    heard: dict[int, list[Heard]], ended_s: float, within_ms: float, watch_s: float = 10.0
) -> float | None:
    """From `ended_s` (a glitch or a load over) to the first moment after which the listeners stay within
    `within_ms` of each other for the rest of `watch_s`; None if they never do."""
    by_stretch: dict[tuple[str, float], list[float]] = {}
    for found in heard.values():
        for h in found:
            by_stretch.setdefault((h.chunk_id, h.offset_ms), []).append(h.heard_s)
    spreads = sorted(
        (min(times), (max(times) - min(times)) * 1000)
        for times in by_stretch.values()
        if len(times) > 1 and ended_s < min(times) < ended_s + watch_s
    )
    for i, (at, _) in enumerate(spreads):
        if all(spread <= within_ms for _, spread in spreads[i:]):
            return (at - ended_s) * 1000
    return None


@dataclass
class Recovery:
    """One listener after an output stall that ended at `resumed_s`."""

    resumed_s: float
    error_before_ms: float  # just before the stall
    worst_ms: float  # the largest error after it
    back_in_ms: float | None  # from the resume until within the bound for good (None: never)
    overshoot_ms: float  # the largest error once back


def recovery(found: list[Heard], resumed_s: float, within_ms: float = 5.0, watch_s: float = 3.0) -> Recovery:
    """Back when the last stretch heard out of bounds is over: the next one heard if it is of the same
    chunk (heard in place); else that chunk's late rest was faded out, and the silence after it, until
    the next sentence, is the timeline's own (a page fades out a tail the timeline says has ended)."""
    before = [h for h in found if h.heard_s < resumed_s - 0.2]
    after = sorted((h for h in found if resumed_s <= h.heard_s <= resumed_s + watch_s), key=lambda h: h.heard_s)
    error_before = before[-1].error_ms if before else float("nan")
    worst = max((abs(h.error_ms) for h in after), default=float("nan"))
    out = [i for i, h in enumerate(after) if abs(h.error_ms) > within_ms]
    back_at = after[0].heard_s if after and not out else None
    if out and out[-1] + 1 < len(after):
        last, following = after[out[-1]], after[out[-1] + 1]
        how = Follow()
        faded_by = last.heard_s + (how.piece_ms + how.hop_ms) / 1000  # the stretch after it was not whole
        back_at = following.heard_s if following.chunk_id == last.chunk_id else faded_by
    overshoot = max((abs(h.error_ms) for h in after if back_at is not None and h.heard_s >= back_at), default=0.0)
    back_in = None if back_at is None else (back_at - resumed_s) * 1000
    return Recovery(resumed_s, error_before, worst, back_in, overshoot)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# -- a tone's level, for a bed or a track dipping under a voice ----------------------------------------


def tone_level(
    recording: Recording, listener: int, hz: float, hop_ms: int = 2, window_ms: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    """A steady tone's amplitude in the listener's channel every hop_ms: (wall-clock times, levels). A
    Hann window centred on each moment, so a ramp's middle is where the filtered ramp's middle is."""
    signal = recording.channel(listener)
    mixed = signal * np.exp(-2j * np.pi * hz * np.arange(len(signal)) / recording.rate)
    window = np.hanning(window_ms * recording.rate // 1000)
    size = 1 << int(np.ceil(np.log2(len(mixed) + len(window))))  # by FFT: a minute of audio in a second
    full = np.fft.ifft(np.fft.fft(mixed, size) * np.fft.fft(window / window.sum(), size))
    start = (len(window) - 1) // 2  # as np.convolve(..., mode="same") centres it
    level = np.abs(full[start : start + len(signal)]) * 2
    frames = np.arange(0, len(signal), hop_ms * recording.rate // 1000)
    times = np.interp(frames, recording.clock.frames, recording.clock.times, left=np.nan, right=np.nan)
    return times, level[frames]


def crossing_s(
    times: np.ndarray, level: np.ndarray, threshold: float, after_s: float, falling: bool, stays: int = 30
) -> float:
    """The first moment after `after_s` the level crosses `threshold` (down if `falling`) and stays across
    for `stays` readings (a ramp does; the brief dip of a page's crossfade after an output glitch does
    not), interpolated."""
    above = level > threshold
    for i in np.nonzero(times > after_s)[0][: -stays - 1]:
        if above[i] == falling and (above[i + 1 : i + 1 + stays] != falling).all():
            a, b = level[i] - threshold, level[i + 1] - threshold
            return float(times[i] + (times[i + 1] - times[i]) * a / (a - b))
    raise AssertionError(f"the level never crossed {threshold:.0f} after {after_s:.3f}")


GLITCH_SHADOW_S = 3.0  # after a glitch a page is correcting (a small one by slewing: up to ~2 s, and more)
GLITCHED_WITHIN_MS = 25.0  # a page that glitched meanwhile: short of what two people at a table hear as an echo


def near_glitch(at_s: float, glitches_s: list[float]) -> bool:
    """Within GLITCH_SHADOW_S after (or half a second before) an output glitch some page detected."""
    return any(-0.5 <= at_s - g <= GLITCH_SHADOW_S for g in glitches_s)


HEARD_JUMP_MS = 2.0  # next stretches of a chunk ~20 ms apart: slewing moves them < 0.1 ms, noise ~0.03 ms


def heard_jumps_s(found: list[Heard], over_ms: float = HEARD_JUMP_MS) -> list[float]:
    """When this listener's output jumped in time as the recording heard it (wall clock, s): a
    discontinuity between two next stretches of a chunk, whether or not the page noticed it (an
    underrun its output timestamps hid, a busy machine's: docs/performance.md)."""
    ordered = sorted(found, key=lambda h: h.heard_s)
    return [
        b.heard_s
        for a, b in zip(ordered, ordered[1:])
        if a.chunk_id == b.chunk_id and b.heard_s - a.heard_s < 0.1 and abs(b.error_ms - a.error_ms) > over_ms
    ]


# A page that moved to a larger output buffer (web/static/buffer.js) plays on a new output, whose first
# seconds are unsteady as a page's first seconds are (docs/performance.md): this long after the move.
MOVED_UNSTEADY_S = 6.0


async def glitches_s(page) -> list[float]:
    """When the page detected output glitches of its own (wall clock, s); for a page that moved to a
    larger output buffer, also marks that put its new output's first MOVED_UNSTEADY_S in their shadow."""
    found = await page.evaluate("window.broadcaster.output.glitches.map((g) => g.atLocalMs / 1000)")
    moved_ms = await page.evaluate("window.broadcaster.bufferMoves ? window.broadcaster.outputBuffer.movedAtMs : null")
    if moved_ms is not None:
        found += [moved_ms / 1000, moved_ms / 1000 + MOVED_UNSTEADY_S - GLITCH_SHADOW_S]
    return found


async def steady_pages(pages: dict[int, object], speech: list[tuple[int, int]]) -> list[int]:
    """The pages that detected no output glitch of their own (an underrun, or output timestamps that
    moved, as in a page's first seconds: docs/performance.md) from GLITCH_SHADOW_S before the voice
    (`speech`, server ms) to a second after it; those are held to the tight bound."""
    begin_s, end_s = speech[0][0] / 1000 - GLITCH_SHADOW_S, speech[-1][1] / 1000 + 1.0
    steady = []
    for listener, page in sorted(pages.items()):
        if not any(begin_s <= at_s <= end_s for at_s in await glitches_s(page)):
            steady.append(listener)
    return steady


async def narrate_until_steady(
    pages: dict[int, object], narrate: Callable[[], Awaitable[list[tuple[int, int]]]], attempts: int = 3
) -> tuple[list[tuple[int, int]], list[int]]:
    """Run `narrate()` (it returns the voice's spans, server ms, once they have played) until every page
    kept its output steady around one (steady_pages), at most `attempts` times, and return the last
    one's spans and its steady pages. On two busy cores a page's output sometimes underruns for seconds
    (docs/performance.md); such a narration measures the machine, so it is narrated again. A page off
    while it reported no glitch still fails, as do pages disturbed every time."""
    for _ in range(attempts):
        speech = await narrate()
        steady = await steady_pages(pages, speech)
        if len(steady) == len(pages):
            break
    return speech, steady


def assert_steady_pages_dip_together(
    recording: Recording,
    listeners: list[int],
    steady: list[int],
    hz: float,
    speech: list[tuple[int, int]],
    duck_db: float,
    within_ms: float,
) -> None:
    """assert_dips_together within `within_ms` for the `steady` listeners, and within GLITCHED_WITHIN_MS
    for all of them; at most one may have glitched."""
    assert len(steady) >= len(listeners) - 1, f"only {steady} of {listeners} kept their output steady"
    assert_dips_together(recording, steady, hz, speech, duck_db, within_ms)
    if steady != listeners:
        assert_dips_together(recording, listeners, hz, speech, duck_db, GLITCHED_WITHIN_MS)


def assert_dips_together(
    recording: Recording,
    listeners: list[int],
    hz: float,
    speech: list[tuple[int, int]],
    duck_db: float,
    within_ms: float,
) -> dict[str, dict[int, float]]:
    """Every listener's tone dips by `duck_db` under the voice (`speech`, server ms) and comes back, with
    the middle of each ramp at the same moment for all of them and where the ducking envelope
    (broadcaster/core/bed.py) puts it, within `within_ms`. Returns those moments (ms from the voice)."""
    from broadcaster.core.bed import ATTACK_MS, HOLD_MS, RELEASE_MS

    start_s, end_s = speech[0][0] / 1000, speech[-1][1] / 1000
    moments: dict[str, dict[int, float]] = {"dip": {}, "return": {}}
    for listener in listeners:
        times, level = tone_level(recording, listener, hz)
        full = np.median(level[(times > start_s - 1.5) & (times < start_s - 0.5)])
        low = np.median(level[(times > start_s + 0.3) & (times < end_s)])
        depth = 20 * np.log10(low / full)
        assert abs(depth - duck_db) <= 1.5, f"listener {listener} dipped by {depth:.1f} dB, not {duck_db}"
        middle = (full + low) / 2
        moments["dip"][listener] = (crossing_s(times, level, middle, start_s - 1.0, falling=True) - start_s) * 1000
        moments["return"][listener] = (crossing_s(times, level, middle, end_s, falling=False) - end_s) * 1000
    for name, due_ms in (("dip", -ATTACK_MS / 2), ("return", HOLD_MS + RELEASE_MS / 2)):
        found = moments[name]
        spread = max(found.values()) - min(found.values())
        assert spread <= within_ms, f"the pages' {name}s are {spread:.1f} ms apart: {found}"
        off = {i: round(m - due_ms, 1) for i, m in found.items()}
        assert all(abs(v) <= within_ms for v in off.values()), f"{name} off the timeline by {off} ms"
    return moments
