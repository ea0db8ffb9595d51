"""Writing one buffer to many sockets, split across threads: every socket gets it exactly once,
and what a full or broken socket did not take is reported, not lost."""

import socket

import pytest

from web import sendmany
from web.sendmany import SocketWriter


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


@pytest.mark.parametrize("threads,count", [(1, 5), (2, 60), (4, 130)])
def test_every_socket_gets_the_bytes_exactly_once(pairs, threads, count, monkeypatch):
    monkeypatch.setattr(sendmany, "MIN_SHARE", 20)  # so the larger groups really are split
    ranges = []

    def recording(data, fds, start, stop):  # noqa: ANN001, ANN202
        ranges.append((start, stop))
        return sendmany_write_each(data, fds, start, stop)

    sendmany_write_each = sendmany.write_each
    monkeypatch.setattr(sendmany, "write_each", recording)
    writer = SocketWriter(threads)
    try:
        group = pairs(count)
        data = b"\x81\x05hello"
        assert writer.write(data, [ours.fileno() for ours, _ in group]) == []
        assert sorted(ranges) == [(count * k // threads, count * (k + 1) // threads) for k in range(threads)]
        assert writer.write(data, [ours.fileno() for ours, _ in group]) == []
        for _, theirs in group:
            assert theirs.recv(100) == data * 2
            with pytest.raises(BlockingIOError):
                theirs.recv(100)
    finally:
        writer.close()


def test_partial_write_takes_a_prefix(pairs):
    ((ours, theirs),) = pairs(1)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 4096
    short = SocketWriter(1).write(data, [ours.fileno()])
    assert [index for index, _ in short] == [0]
    took = short[0][1]
    assert 0 < took < len(data)
    received = b""
    while True:
        try:
            received += theirs.recv(1 << 20)
        except BlockingIOError:
            break
    assert received == data[:took]  # a prefix, so the caller can hand on exactly data[took:]


def test_a_full_socket_that_took_nothing_reports_zero(pairs):
    ((ours, _),) = pairs(1)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    while True:
        try:
            ours.send(b"x" * 65536)
        except BlockingIOError:
            break
    assert SocketWriter(1).write(b"more", [ours.fileno()]) == [(0, 0)]


def test_a_broken_connection_is_reported_and_the_rest_still_get_it(pairs, monkeypatch):
    monkeypatch.setattr(sendmany, "MIN_SHARE", 2)
    group = pairs(6)
    broken, _ = group[3]
    broken.shutdown(socket.SHUT_WR)  # writing to it now fails with EPIPE
    writer = SocketWriter(2)
    try:
        assert writer.write(b"hi", [ours.fileno() for ours, _ in group]) == [(3, -1)]
    finally:
        writer.close()
    for index, (_, theirs) in enumerate(group):
        assert theirs.recv(10) == (b"" if index == 3 else b"hi")
