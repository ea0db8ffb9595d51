"""Writing one buffer to many sockets, split between this process and helper processes: every
socket gets it exactly once, and what a full, broken or unreachable socket did not take is
reported, not lost."""

import os
import resource
import signal
import socket
import time

import pytest

from web import sendmany
from web.sendmany import LOST, SocketWriter
from web.sendmany import write_each as sendmany_write_each


@pytest.fixture
def pairs():
    made = []

    def make(count: int) -> list[tuple[socket.socket, socket.socket]]:
        for _ in range(count):
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
            theirs.setblocking(False)
            made.append((ours, theirs))
        return made

    yield make
    for ours, theirs in made:
        ours.close()
        theirs.close()


@pytest.fixture
def writer():
    made = []

    def make(processes: int) -> SocketWriter:
        made.append(SocketWriter(processes))
        return made[-1]

    yield make
    for each in made:
        each.close()


@pytest.fixture
def split(pairs, writer, monkeypatch):
    """`split(n)`: n socket pairs attached to a writer that always shares the work with one helper,
    dealt out two sockets at a time (the helper holds the first AHEAD batches from the start)."""
    monkeypatch.setattr(sendmany, "HELPERS_FROM", 2)
    monkeypatch.setattr(sendmany, "BATCH", 2)

    def make(count: int) -> tuple[list, SocketWriter, list[int]]:
        group = list(pairs(count))[-count:]
        fanout = writer(2)
        return group, fanout, [fanout.attach(ours.fileno()) for ours, _ in group]

    return make


def drain(sock: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return received
        if not chunk:
            return received
        received += chunk


@pytest.mark.parametrize("processes,count", [(1, 5), (2, 60), (3, 130)])
def test_every_socket_gets_the_bytes_exactly_once(pairs, writer, processes, count, monkeypatch):
    """Every socket gets each write exactly once, whichever process wrote it."""
    monkeypatch.setattr(sendmany, "HELPERS_FROM", 20)  # so the larger groups really are split
    group = pairs(count)
    fanout = writer(processes)
    keys = [fanout.attach(ours.fileno()) for ours, _ in group]
    data = b"\x81\x05hello"
    assert fanout.write(data, keys) == []
    assert len(fanout.helper_pids) == (processes - 1 if count >= 20 else 0)
    assert fanout.write(data, keys) == []
    for _, theirs in group:
        assert drain(theirs) == data * 2


def test_helpers_really_write_their_share(split, monkeypatch):
    """With the server's own share cut out, the helper's share still arrives: another process wrote it."""
    group, fanout, keys = split(10)
    monkeypatch.setattr(sendmany, "write_each", lambda data, fds, first=0: [])  # this process writes nothing
    assert fanout.write(b"hi", keys) == []
    received = [drain(theirs) for _, theirs in group]
    assert received[:4] == [b"hi"] * 4, "the batches it held from the start"
    assert received.count(b"") >= 2 and set(received) == {b"hi", b""}, "and never this process's"


def test_a_helper_that_answers_is_handed_more_and_every_socket_gets_it_once(split, monkeypatch):
    """The event loop's thread deals the rest out as answers come: with it slow, the helper writes more."""
    group, fanout, keys = split(40)
    own = []

    def slow_write_each(data, fds, first=0):
        own.extend(range(first, first + len(fds)))
        time.sleep(0.02)  # the helper answers meanwhile
        return sendmany_write_each(data, fds, first)

    monkeypatch.setattr(sendmany, "write_each", slow_write_each)
    assert fanout.write(b"hi", keys) == []
    assert [drain(theirs) for _, theirs in group] == [b"hi"] * 40
    assert 2 <= len(own) <= 20, f"the helper wrote most of them, this process {len(own)}"


def test_a_detached_socket_closes_for_the_peer(split):
    """Once detached and closed here, the peer sees the end: no helper keeps a duplicate open."""
    group, fanout, keys = split(4)
    assert fanout.write(b"x", keys) == []
    ours, theirs = group[0]
    fanout.detach(keys[0])
    ours.close()
    assert fanout.write(b"y", keys[1:]) == []  # the helper has read the detach by now
    theirs.setblocking(True)
    theirs.settimeout(5)
    assert theirs.recv(10) == b"x"
    assert theirs.recv(10) == b""  # end of file: the connection really closed


def test_partial_write_takes_a_prefix(pairs, writer):
    """A socket with little room takes a prefix, so the caller can hand on exactly the rest."""
    ((ours, theirs),) = pairs(1)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 4096
    fanout = writer(1)
    short = fanout.write(data, [fanout.attach(ours.fileno())])
    assert [index for index, _ in short] == [0]
    took = short[0][1]
    assert 0 < took < len(data)
    assert drain(theirs) == data[:took]


def test_a_full_socket_that_took_nothing_reports_zero(pairs, writer):
    """A socket with no room at all reports 0 bytes taken."""
    ((ours, _),) = pairs(1)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    while True:
        try:
            ours.send(b"x" * 65536)
        except BlockingIOError:
            break
    fanout = writer(1)
    assert fanout.write(b"more", [fanout.attach(ours.fileno())]) == [(0, 0)]


def test_a_broken_connection_is_reported_and_the_rest_still_get_it(split):
    """A broken connection in either share is reported as -1; the others get the bytes."""
    group, fanout, keys = split(6)
    for index in (1, 4):  # one in this process's share, one in the helper's
        group[index][0].shutdown(socket.SHUT_WR)  # writing to it now fails with EPIPE
    assert sorted(fanout.write(b"hi", keys)) == [(1, -1), (4, -1)]
    for index, (_, theirs) in enumerate(group):
        assert drain(theirs) == (b"" if index in (1, 4) else b"hi")


def test_a_socket_the_helper_never_got_is_left_to_the_caller(split):
    """A key the helper holds no socket for reports 0 bytes taken, so the caller sends it all."""
    group, fanout, keys = split(4)
    assert fanout.write(b"a", keys) == []
    helper = fanout._helpers[0]
    helper.detach([keys[3]])  # behind the writer's back: now only this process knows that socket
    assert fanout.write(b"b", keys) == [(3, 0)]
    assert [drain(theirs) for _, theirs in group] == [b"ab", b"ab", b"ab", b"a"]


def test_a_dead_helper_loses_only_its_share_and_a_new_one_starts_later(split, monkeypatch):
    """A helper that died is stopped; its share is reported LOST, and a later write starts a fresh helper."""
    monkeypatch.setattr(sendmany, "RESTART_AFTER_S", 0)
    group, fanout, keys = split(6)
    assert fanout.write(b"a", keys) == []
    (first,) = fanout.helper_pids
    os.kill(first, signal.SIGKILL)
    os.waitpid(first, 0)
    short = fanout.write(b"b", keys)
    # Its death shows either when the command is sent (then this process writes that share
    # itself) or when the answer is awaited (then the share is lost).
    lost = {index for index, sent in short}
    assert all(sent == LOST for _, sent in short) and lost <= {0, 1, 2, 3}, "only what it held is lost"
    assert fanout.helper_pids == []
    assert fanout.write(b"c", keys) == []
    assert fanout.helper_pids and fanout.helper_pids != [first]
    received = [drain(theirs) for _, theirs in group]
    assert received == [b"ac" if index in lost else b"abc" for index in range(6)]


def test_a_socket_closed_before_it_reaches_the_helper_costs_nothing_else(split, pairs):
    """Attaching a descriptor that is already closed skips it; the helper stays and the others are written."""
    group, fanout, keys = split(4)
    gone, _ = group[1]
    gone.close()  # its peer left before the helpers started: the writer still lists it
    assert fanout.write(b"a", [keys[0], keys[2], keys[3]]) == []
    (pid,) = fanout.helper_pids
    late, late_peer = pairs(1)[-1]
    number = late.fileno()
    late.close()
    late_key = fanout.attach(number)  # closed: the attach is skipped, not fatal
    assert fanout.helper_pids == [pid]
    assert fanout.write(b"b", [keys[0], keys[2], keys[3]]) == []
    assert [drain(theirs) for k, (_, theirs) in enumerate(group) if k != 1] == [b"ab"] * 3
    fanout.detach(late_key)
    assert drain(late_peer) == b""


def test_a_socket_closed_by_its_owner_is_still_written_to_its_own_peer_never_to_a_newcomer(pairs, writer):
    """The writer holds its own descriptor until detach: a new socket given the old number is not reached."""
    fanout = writer(1)
    ((old, old_peer),) = pairs(1)
    number = old.fileno()
    key = fanout.attach(number)
    old.close()  # the transport closed its descriptor; the hub has not detached it yet
    newcomer, newcomer_peer = socket.socketpair()
    try:
        newcomer_peer.setblocking(False)
        assert newcomer.fileno() == number, "the lowest free number is reused at once"
        assert fanout.write(b"late", [key]) == []
        assert drain(newcomer_peer) == b""
        assert drain(old_peer) == b"late"
        fanout.detach(key)
        old_peer.settimeout(5)
        assert old_peer.recv(10) == b"", "detached: now the connection ends"
    finally:
        newcomer.close()
        newcomer_peer.close()


def test_a_helper_whose_channel_is_numbered_past_1024_is_still_heard(split):
    """A server with thousands of listeners starts its helpers with descriptors numbered in the thousands."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    filler = [os.dup(0) for _ in range(1100)]
    try:
        group, fanout, keys = split(10)
        assert fanout.write(b"hi", keys) == []  # the helper starts here, its channel past 1024
        assert fanout.write(b"!", keys) == []
        assert [drain(theirs) for _, theirs in group] == [b"hi!"] * 10
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
