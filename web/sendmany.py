"""One message to thousands of sockets: the cost of a broadcast.

A small send on a TCP socket costs about ten microseconds of kernel time (on
loopback the receiver's side of TCP runs inside the sender's system call as
well), and going through an asyncio transport adds as much again in Python.
So a listener whose transport has nothing buffered gets one `os.write` on its
socket, and a large group is split between this process and helper processes
(web/sendhelper.py) that hold duplicates of the sockets, passed to them with
SCM_RIGHTS when each listener arrives. Threads were tried first: `os.write`
releases the GIL, but with thousands of short system calls the threads spent
most of their time handing the GIL back and forth, and a helper thread ran
for a sixth of the time the main one did. Processes share nothing.

The sockets are dealt out in batches of BATCH: each helper has AHEAD of them in
hand, and the event loop's thread writes batches itself, handing a helper its
next one whenever it answers one. So whichever process the machine runs more
of writes more; with fixed halves the broadcast lasted as long as the slower
half (in one traced run on two shared cores, up to 18 ms past the other).
The event loop's thread returns only when every answer is in, so nothing else
touches those sockets meanwhile: no transport writes between, none closes one
mid-write. Whatever a socket did not take is reported back, and the caller
hands the rest to that socket's transport, which sends it when the socket
drains.

Each attached socket is written through a duplicate descriptor of the
writer's own, closed only at `detach`: the transport may close its
descriptor first (a connection lost), and a new connection may be given the
same number at once, which a write by number would then reach.

Helpers start when a broadcast first reaches HELPERS_FROM sockets; below that
a broadcast takes a few milliseconds in one process, and a helper would only
cost memory. A helper that fails is stopped; the sockets of its share are
reported as LOST, since part of a message may have reached them, and the next
large broadcast starts a fresh one.
"""

import array
import errno
import logging
import os
import select
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from tts.children import child_setup

log = logging.getLogger(__name__)

HELPERS_FROM = 1024  # sockets in one broadcast before helper processes are worth their memory
MAX_PROCESSES = 4
MAX_KEYS = 8192  # keys per write command (32 KB): with MAX_DATA, well inside a socket pair's buffer
BATCH = 250  # sockets per batch dealt out: about 3 ms of writing here
AHEAD = 2  # batches each helper holds, so it never waits for the event loop's thread between two
MAX_DATA = 65536  # a larger broadcast (a long queue) is written in this process alone
REPLY_TIMEOUT_S = 5.0
RESTART_AFTER_S = 10.0
LOST = -2  # `sent` for a socket whose helper failed mid-write: its stream may hold part of a message
SCRIPT = Path(__file__).with_name("sendhelper.py")

# (index into the keys given, bytes the socket took: 0 when full, -1 when broken, LOST)
Short = tuple[int, int]


def default_processes() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_PROCESSES))


def write_each(data: bytes, fds: list[int], first: int = 0) -> list[Short]:
    """Write `data` to every fd; (first + index, sent) of the sockets that did not take all of it."""
    short = []
    size, write = len(data), os.write
    for index, fd in enumerate(fds, first):
        try:
            sent = write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:  # reset or closed by the peer: its reader will see it and clean up
            sent = -1
        if sent != size:
            short.append((index, sent))
    return short


class HelperFailed(Exception):
    pass


class BadDescriptor(Exception):
    """A socket to pass on was already closed here: the helper itself is fine."""


class HelperProcess:
    """The server's end of one helper: commands out, answers back, over a SOCK_SEQPACKET pair."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                preexec_fn=child_setup(),
            )
        finally:
            theirs.close()
        ours.settimeout(REPLY_TIMEOUT_S)
        self.channel = ours
        self.waiting = 0  # answers still to read: it may be writing
        self._answers = select.poll()  # not select(): with thousands of sockets open, our number is past 1024
        self._answers.register(ours, select.POLLIN)

    def attach(self, keys: list[int], fds: list[int]) -> None:
        for start in range(0, len(keys), 250):
            try:
                self._attach(keys[start : start + 250], fds[start : start + 250])
            except BadDescriptor:  # one of them closed meanwhile (its peer left): pass the others one by one
                for key, fd in zip(keys[start : start + 250], fds[start : start + 250]):
                    try:
                        self._attach([key], [fd])
                    except BadDescriptor:
                        pass  # never written: its listener is on its way out

    def _attach(self, keys: list[int], fds: list[int]) -> None:
        fds_bytes = array.array("i", fds).tobytes()
        self._send(b"A" + array.array("I", keys).tobytes(), [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds_bytes)])

    def detach(self, keys: list[int]) -> None:
        self._send(b"D" + array.array("I", keys).tobytes())

    def start_write(self, data: bytes, keys: list[int]) -> None:
        """Hand over one batch (at most MAX_KEYS); its answer comes back in turn."""
        self._send(b"W" + array.array("i", [len(data)]).tobytes() + data + array.array("I", keys).tobytes())
        self.waiting += 1

    def answered(self) -> bool:
        """An answer is there to read now."""
        return bool(self.waiting) and bool(self._answers.poll(0))

    def finish_one(self) -> list[Short]:
        """The sockets of the oldest batch not yet answered that did not take all of it, by index in it."""
        try:
            answer = self.channel.recv(MAX_KEYS * 8 + 1)
        except OSError as exc:
            raise HelperFailed(f"expected an answer from fan-out helper {self.proc.pid}, got {exc!r}") from None
        if answer[:1] != b"R":
            raise HelperFailed(f"expected an answer from fan-out helper {self.proc.pid}, got {answer[:8]!r}")
        self.waiting -= 1
        pairs = array.array("i", answer[1:])
        return [(pairs[k], pairs[k + 1]) for k in range(0, len(pairs), 2)]

    def _send(self, message: bytes, ancdata: list | None = None) -> None:
        try:
            self.channel.sendmsg([message], ancdata or [])
        except OSError as exc:
            if exc.errno == errno.EBADF and ancdata and self.channel.fileno() >= 0:
                raise BadDescriptor() from None
            raise HelperFailed(f"could not reach fan-out helper {self.proc.pid}: {exc!r}") from None

    def stop(self) -> None:
        self.channel.close()  # the helper reads end-of-file and exits
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Deal:
    """One write's batches: which each helper holds, in the order it answers them, and what was lost."""

    def __init__(self, data: bytes, keys: list[int], helpers: list[HelperProcess], todo: deque[range]):
        self.data, self.keys, self.todo = data, keys, todo
        self.held: dict[HelperProcess, deque[range]] = {helper: deque() for helper in helpers}
        self.failed: list[tuple[HelperProcess, HelperFailed]] = []
        self.lost: list[Short] = []  # sockets of batches a failed helper held: part may have reached them

    def hand(self, helper: HelperProcess) -> None:
        """Top the helper up to AHEAD batches, while any are left."""
        held = self.held.get(helper)
        while held is not None and len(held) < AHEAD and self.todo:
            batch = self.todo.popleft()
            try:
                helper.start_write(self.data, self.keys[batch.start : batch.stop])
            except HelperFailed as exc:
                self.todo.appendleft(batch)  # never sent: written here after all
                self._give_up(helper, exc)
                return
            held.append(batch)

    def take_answer(self, helper: HelperProcess) -> list[Short]:
        batch = self.held[helper].popleft()
        try:
            return [(batch.start + index, sent) for index, sent in helper.finish_one()]
        except HelperFailed as exc:
            self.held[helper].appendleft(batch)
            self._give_up(helper, exc)
            return []

    def _give_up(self, helper: HelperProcess, exc: HelperFailed) -> None:
        self.lost += [(index, LOST) for batch in self.held.pop(helper) for index in batch]
        self.failed.append((helper, exc))


class SocketWriter:
    """Writes the same bytes to many non-blocking sockets, across `processes` processes when there are many.

    Sockets are attached once (`attach` returns a key, 0 if the socket is already closed or no
    descriptor is left) and written by key. Until `detach` the writer's duplicates keep the
    connection open.
    """

    def __init__(self, processes: int = 0, on_failure: Callable[[], None] = lambda: None):
        self.processes = processes or default_processes()
        self.on_failure = on_failure  # a helper failed and was stopped
        self._fds: dict[int, int] = {}  # key -> our descriptor
        self._next_key = 0
        self._helpers: list[HelperProcess] = []
        self._started_at = -RESTART_AFTER_S

    @property
    def helper_pids(self) -> list[int]:
        return [helper.proc.pid for helper in self._helpers]

    def attach(self, fd: int) -> int:
        try:
            own = os.dup(fd)
        except OSError as exc:  # closed already, or out of descriptors: the caller writes it the slow way
            log.debug("fan-out: socket %d not attached: %r", fd, exc)
            return 0
        key = self._next_key = self._next_key % 0xFFFFFFFF + 1  # 1 .. 2**32 - 1: 0 means not attached
        self._fds[key] = own
        self._each_helper(lambda helper: helper.attach([key], [own]))
        return key

    def detach(self, key: int) -> None:
        own = self._fds.pop(key, None)
        if own is not None:
            self._each_helper(lambda helper: helper.detach([key]))
            os.close(own)

    def write(self, data: bytes, keys: list[int]) -> list[Short]:
        helpers = self._helpers_for(len(keys), len(data))
        if not helpers:
            return write_each(data, [self._fds[key] for key in keys])
        todo = deque(range(start, min(start + BATCH, len(keys))) for start in range(0, len(keys), BATCH))
        deal = _Deal(data, keys, helpers, todo)
        for helper in helpers:
            deal.hand(helper)
        short, fds = [], self._fds
        while todo:
            batch = todo.popleft()
            short += write_each(data, [fds[keys[i]] for i in batch], batch.start)
            for helper in helpers:
                while helper in deal.held and helper.answered():
                    short += deal.take_answer(helper)
                deal.hand(helper)
        for helper in helpers:
            while deal.held.get(helper):
                short += deal.take_answer(helper)
        for helper, exc in deal.failed:
            self._fail(helper, exc)
        return short + deal.lost

    def _helpers_for(self, count: int, size: int) -> list[HelperProcess]:
        if count < HELPERS_FROM or self.processes < 2 or size > MAX_DATA:
            return []
        if not self._helpers and time.monotonic() - self._started_at >= RESTART_AFTER_S:
            self._start_helpers()
        return list(self._helpers)

    def _start_helpers(self) -> None:
        self._started_at = time.monotonic()
        keys = list(self._fds)
        for _ in range(self.processes - 1):
            try:
                helper = HelperProcess()
            except OSError as exc:
                log.error("fan-out: could not start a helper process (%r); writing in one process", exc)
                return
            self._helpers.append(helper)
            try:
                helper.attach(keys, [self._fds[key] for key in keys])
            except HelperFailed as exc:
                self._fail(helper, exc)
                return
        log.info("fan-out: %d helper processes started (pids %s)", len(self._helpers), self.helper_pids)

    def _each_helper(self, command) -> None:  # noqa: ANN001
        for helper in list(self._helpers):
            try:
                command(helper)
            except HelperFailed as exc:
                self._fail(helper, exc)

    def _fail(self, helper: HelperProcess, exc: HelperFailed) -> None:
        log.error("fan-out: %s; stopping it", exc)
        self.on_failure()
        helper.proc.kill()
        helper.stop()
        if helper in self._helpers:
            self._helpers.remove(helper)

    def close(self) -> None:
        for helper in self._helpers:
            helper.stop()
        self._helpers = []
        for own in self._fds.values():
            os.close(own)
        self._fds = {}
