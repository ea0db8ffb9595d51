"""A minimal WebSocket client for load generation: thousands of listeners per process.

Why not aiohttp or websockets here: at 5000 sockets on a 2-core machine the
client's own per-frame work competes with the server for CPU and, worse, the
time a busy client gets round to a socket would be counted as server latency.
So this client does the least RFC 6455 a listener needs (the upgrade, unmasked
frames from the server, pongs, masked text frames out, the close handshake),
optionally offers permessage-deflate the way browsers do (RFC 7692; this server
declines it, web/ws.py sets compress=False, so its frames come uncompressed, but
a browser-like load offers it all the same; a server that agrees has its
compressed frames inflated), and reads with `recvmsg` under SO_TIMESTAMPNS:
every frame carries the kernel's receive time as well as the time this process
read it. Both are CLOCK_REALTIME, the clock the server's `*_ms` times come from.

Reads never go past the end of the frame being read, so a frame's kernel time
is the arrival of its own last byte. (If the reader falls behind, TCP may
merge queued segments, and the time is then that of the newest: an
overestimate, never an underestimate.)
"""

import asyncio
import base64
import hashlib
import os
import socket
import struct
import time
import zlib
from collections.abc import Callable

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export it
ANCILLARY = socket.CMSG_SPACE(16)
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DEFLATE_OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"  # what Chrome sends
DEFLATE_TAIL = b"\x00\x00\xff\xff"  # stripped by the sender of each compressed message (RFC 7692 7.2.1)
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
READS_PER_WAKEUP = 32  # then let other sockets have a turn

# on_text(payload, kernel_ns, read_ns): kernel_ns is when the frame reached this host's TCP stack
OnText = Callable[[bytes, int, int], None]


class HandshakeError(Exception):
    """The server answered the upgrade with something other than 101 (a 404, a 429, a cap)."""


def frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.2): clients must mask, with a fresh key each frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + key + masked


def _header_length(buf: bytearray) -> int:
    size = buf[1] & 0x7F
    return 2 + (2 if size == 126 else 8 if size == 127 else 0) + (4 if buf[1] & 0x80 else 0)


def _payload_length(buf: bytearray) -> int:
    size = buf[1] & 0x7F
    if size == 126:
        return struct.unpack_from("!H", buf, 2)[0]
    if size == 127:
        return struct.unpack_from("!Q", buf, 2)[0]
    return size


class LightSocket:
    """One open connection. `closed` resolves to the close code (1006 when the TCP connection just ended)."""

    def __init__(self, sock: socket.socket, on_text: OnText | None, leftover: bytes, deflate: str | None = None):
        """`deflate`: the server's permessage-deflate answer, or None when it was not agreed."""
        self.sock = sock
        self.on_text = on_text
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[int] = self.loop.create_future()
        self.frames = 0
        self._buf = bytearray(leftover)
        self._fragments: list[bytes] = []
        self._compressed = False
        self.deflate = deflate is not None
        self._fresh_inflater = deflate is not None and "server_no_context_takeover" in deflate
        self._inflater = zlib.decompressobj(-15) if deflate is not None else None
        self._out = bytearray()
        self._close_sent = False
        self._close_code = 1006
        now = time.time_ns()
        self._drain(now, now)
        if not self.closed.done():
            self.loop.add_reader(sock.fileno(), self._readable)

    # -- reading -----------------------------------------------------------------

    def pause(self) -> None:
        """Read what has arrived, then stop reading: what arrives next waits in the kernel's receive
        buffer, costing this process nothing."""
        while not self.closed.done() and self._readable():
            pass
        if not self.closed.done():
            self.loop.remove_reader(self.sock.fileno())

    def resume(self) -> None:
        if not self.closed.done():
            self.loop.add_reader(self.sock.fileno(), self._readable)

    def _wanted(self) -> int:
        """Bytes that complete the current header or frame, and not one more."""
        buf = self._buf
        if len(buf) < 2:
            return 2 - len(buf)
        header = _header_length(buf)
        if len(buf) < header:
            return header - len(buf)
        return header + _payload_length(buf) - len(buf)

    def _readable(self) -> bool:
        """Read up to READS_PER_WAKEUP times; True if there may be more."""
        for _ in range(READS_PER_WAKEUP):
            try:
                data, ancillary, _, _ = self.sock.recvmsg(max(self._wanted(), 1), ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                self._lost()
                return False
            read_ns = time.time_ns()
            if not data:
                self._lost()
                return False
            kernel_ns = read_ns
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanos = struct.unpack("qq", value[:16])
                    kernel_ns = seconds * 1_000_000_000 + nanos
            self._buf += data
            self._drain(kernel_ns, read_ns)
            if self.closed.done():
                return False
        return True

    def _drain(self, kernel_ns: int, read_ns: int) -> None:
        buf = self._buf
        while len(buf) >= 2 and len(buf) >= _header_length(buf):
            header, size = _header_length(buf), _payload_length(buf)
            if len(buf) < header + size:
                return
            first, payload = buf[0], bytes(buf[header : header + size])
            del buf[: header + size]
            self._frame(first & 0x80, first & 0x40, first & 0x0F, payload, kernel_ns, read_ns)

    def _inflate(self, data: bytes) -> bytes:
        if self._fresh_inflater:
            self._inflater = zlib.decompressobj(-15)
        return self._inflater.decompress(data + DEFLATE_TAIL)

    def _frame(self, fin: int, rsv1: int, opcode: int, payload: bytes, kernel_ns: int, read_ns: int) -> None:
        if opcode == PING:
            self._send(frame(PONG, payload))
        elif opcode == CLOSE:
            self._close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if not self._close_sent:
                self._send(frame(CLOSE, payload[:2]))
                self._close_sent = True
            self._lost()
        elif opcode in (TEXT, 0x0):
            if opcode == TEXT:
                self._compressed = bool(rsv1)
            self._fragments.append(payload)
            if fin:
                text, self._fragments = b"".join(self._fragments), []
                if self._compressed:
                    text = self._inflate(text)
                self.frames += 1
                if self.on_text is not None:
                    self.on_text(text, kernel_ns, read_ns)

    # -- writing -----------------------------------------------------------------

    def send_text(self, text: str) -> None:
        if not self._close_sent and not self.closed.done():
            self._send(frame(TEXT, text.encode()))

    def _send(self, data: bytes) -> None:
        if self.closed.done():
            return
        if not self._out:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._lost()
                return
            data = data[sent:]
            if not data:
                return
            self.loop.add_writer(self.sock.fileno(), self._writable)
        self._out += data

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost()
            return
        del self._out[:sent]
        if not self._out:
            self.loop.remove_writer(self.sock.fileno())

    # -- ending ------------------------------------------------------------------

    async def close(self, timeout_s: float = 5.0) -> int:
        """The close handshake: send 1000, wait for the server's close, then drop the socket."""
        if not self._close_sent and not self.closed.done():
            self._send(frame(CLOSE, struct.pack("!H", 1000)))
            self._close_sent = True
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(self.closed)
        except TimeoutError:
            self._lost()
            return self.closed.result()

    def _lost(self) -> None:
        if self.closed.done():
            return
        fd = self.sock.fileno()
        if fd >= 0:
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
        self.sock.close()
        self.closed.set_result(self._close_code)


async def open_socket(
    host: str, port: int, path: str, on_text: OnText | None = None, timeout_s: float = 30.0, deflate: bool = False
) -> LightSocket:
    """Connect and upgrade, offering permessage-deflate if `deflate`; raises HandshakeError or OSError."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        async with asyncio.timeout(timeout_s):
            await loop.sock_connect(sock, (host, port))
            key = base64.b64encode(os.urandom(16))
            await loop.sock_sendall(
                sock,
                b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                b"Sec-WebSocket-Version: 13\r\nUser-Agent: broadcaster-bench\r\n%s\r\n"
                % (path.encode(), host.encode(), port, key, DEFLATE_OFFER if deflate else b""),
            )
            head, leftover = await _read_head(loop, sock)
    except BaseException:
        sock.close()
        raise
    status = head.split(b"\r\n", 1)[0]
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    if not status.startswith(b"HTTP/1.1 101") or accept not in head:
        sock.close()
        raise HandshakeError(status.decode(errors="replace"))
    return LightSocket(sock, on_text, leftover, _agreed_deflate(head))


def _agreed_deflate(head: bytes) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in value:
            return value.strip()
    return None


async def _read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        more = await loop.sock_recv(sock, 4096)
        if not more:
            raise ConnectionResetError("the server closed the connection during the upgrade")
        data += more
        if len(data) > 65536:
            raise HandshakeError("expected an upgrade response, got more than 64 KiB of headers")
    head, _, leftover = data.partition(b"\r\n\r\n")
    return head, leftover
