"""A fan-out helper process: writes broadcasts to its share of the listeners' sockets.

Run by web/sendmany.py as a script (`python sendhelper.py FD`), so it imports
nothing but the standard library and starts in a few milliseconds. FD is its
end of a SOCK_SEQPACKET socket pair; each message on it is one command:

    A keys...            attach: the sockets themselves ride along (SCM_RIGHTS), one per key
    D keys...            detach: close our duplicates of these sockets
    W size data keys...  write `data` to each key's socket, then answer
    R (index, sent)...   the answer: every socket that did not take all of the data

Keys are unsigned 32-bit, `size` and the answer's pairs signed 32-bit, all in
native byte order (both ends are on this machine). `sent` is the count of
bytes the socket took: 0 when it was full or when we never got that socket
(the server then writes the whole message itself), -1 when the connection is
broken. The sockets are non-blocking: that flag lives on the shared file
description, so our duplicates inherit it.

The helper exits when the server closes its end, or dies with it.
"""

import array
import os
import signal
import socket
import sys

MAX_MESSAGE = 1 << 20
MAX_FDS = 250  # the kernel takes at most 253 descriptors in one message


def received_fds(ancdata: list) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def write_each(data: bytes, fds: list[int]) -> array.array:
    """Write `data` to every fd (-1: a socket we do not have); (index, sent) of those that did not take it all."""
    short = array.array("i")
    size, write = len(data), os.write
    for index, fd in enumerate(fds):
        if fd < 0:
            sent = 0
        else:
            try:
                sent = write(fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:  # reset or closed by the peer: the server's reader sees it and cleans up
                sent = -1
        if sent != size:
            short.extend((index, sent))
    return short


class Helper:
    def __init__(self, channel: socket.socket):
        self.channel = channel
        self.fds: dict[int, int] = {}

    def serve(self) -> None:
        while True:
            message, ancdata, _, _ = self.channel.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4))
            if not message:
                return
            kind, body = message[:1], message[1:]
            if kind == b"A":
                self.attach(array.array("I", body), received_fds(ancdata))
            elif kind == b"D":
                self.detach(array.array("I", body))
            elif kind == b"W":
                self.channel.send(b"R" + self.write(body).tobytes())

    def attach(self, keys: array.array, fds: list[int]) -> None:
        # Fewer fds than keys: we hit our descriptor limit. Those keys stay unknown, and
        # writes to them report 0 bytes taken, so the server sends those itself.
        for key, fd in zip(keys, fds):
            self.detach((key,))
            self.fds[key] = fd
        for fd in fds[len(keys) :]:
            os.close(fd)

    def detach(self, keys) -> None:  # noqa: ANN001
        for key in keys:
            fd = self.fds.pop(key, None)
            if fd is not None:
                os.close(fd)

    def write(self, body: bytes) -> array.array:
        sizes = array.array("i", body[:4])
        data = body[4 : 4 + sizes[0]]
        keys = array.array("I", body[4 + sizes[0] :])
        lookup = self.fds.get
        return write_each(data, [lookup(key, -1) for key in keys])


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the server; we follow it out
    channel = socket.socket(fileno=int(sys.argv[1]))
    try:
        Helper(channel).serve()
    except (ConnectionError, OSError):
        pass  # the server is gone
    finally:
        channel.close()


if __name__ == "__main__":
    main()
