"""The floor under a broadcast: one message written to N loopback sockets, nothing else.

No server, no WebSocket, no JSON: N connected TCP socket pairs on 127.0.0.1,
the server ends non-blocking with TCP_NODELAY as asyncio leaves them, the
client ends drained by reader processes (at idle priority by default,
standing in for clients on other machines). The server's `SocketWriter` (web/sendmany.py)
writes a 500-byte frame to all N, first in this process alone (the baseline),
then split with helper processes, interleaved round by round. What it shows:
the kernel's cost per send on this machine, which bounds what any broadcast
to N loopback sockets can take.

    .venv/bin/python bench/sendcost.py [--sockets 1000 5000] [--rounds 15] [--readers 2] [--reader-priority idle]
    .venv/bin/python bench/sendcost.py --readers 0     # nobody reads: the send alone, receiver's TCP included
"""

import argparse
import os
import resource
import select
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers import PRIORITIES, lower_priority

from web import sendmany
from web.sendmany import SocketWriter, default_processes

FRAME = b"\x81\x7e\x01\xf4" + b"x" * 500  # a 500-byte WebSocket text frame


def socket_pairs(count: int) -> tuple[list[socket.socket], list[socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    servers, clients = [], []
    for _ in range(count):
        clients.append(socket.create_connection(listener.getsockname()))
        server, _ = listener.accept()
        server.setblocking(False)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        servers.append(server)
    listener.close()
    return servers, clients


def start_reader(clients: list[socket.socket], priority: str) -> int:
    """A child process that reads and discards everything arriving on `clients`."""
    pid = os.fork()
    if pid:
        return pid
    try:
        lower_priority(priority)
        poll = select.epoll()
        by_fd = {}
        for client in clients:
            client.setblocking(False)
            poll.register(client.fileno(), select.EPOLLIN)
            by_fd[client.fileno()] = client
        while True:
            for fd, _ in poll.poll():
                try:
                    by_fd[fd].recv(1 << 16)
                except BlockingIOError:
                    pass
    finally:
        os._exit(0)


def measure(count: int, rounds: int, readers: int, priority: str) -> dict[int, list[float]]:
    servers, clients = socket_pairs(count)
    pids = [start_reader(clients[k::readers], priority) for k in range(readers)]
    if readers:
        for client in clients:
            client.close()  # the readers have their copies
    # else nobody reads: what arrives waits in each socket's receive buffer, and no reader is woken
    sendmany.HELPERS_FROM = 1  # split every group, whatever its size: this measures the split itself
    writers = {n: SocketWriter(n) for n in sorted({1, default_processes()})}
    keys: dict[int, list[int]] = {n: [] for n in writers}
    for server in servers:
        for n, writer in writers.items():
            keys[n].append(writer.attach(server.fileno()))
        server.close()  # each writer has its own copy
    if not all(all(k) for k in keys.values()):
        raise RuntimeError("expected every socket attached; out of descriptors? (ulimit -n)")
    times: dict[int, list[float]] = {n: [] for n in writers}
    try:
        for _ in range(rounds):
            for n, writer in writers.items():
                time.sleep(0.3)  # the readers catch up
                started = time.perf_counter()
                short = writer.write(FRAME, keys[n])
                times[n].append((time.perf_counter() - started) * 1000)
                if short:
                    raise RuntimeError(f"expected every socket to take the frame, {len(short)} did not")
    finally:
        for writer in writers.values():
            writer.close()
        for pid in pids:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        for sock in [*servers, *([] if readers else clients)]:
            sock.close()
    return times


def main(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(
        f"one {len(FRAME)}-byte frame to N loopback sockets, {args.rounds} rounds, {args.readers} reader "
        f"processes at {args.reader_priority} priority; {os.cpu_count()} cores\n"
    )
    print("sockets  processes  median ms  min ms  per socket us (median)  vs one process")
    for count in args.sockets:
        times = measure(count, args.rounds, args.readers, args.reader_priority)
        base = statistics.median(times[1])
        for n, values in times.items():
            median = statistics.median(values)
            print(
                f"{count:7d}  {n:9d}  {median:9.1f}  {min(values):6.1f}  {median * 1000 / count:22.1f}  "
                f"{base / median:13.2f}x"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--readers",
        type=int,
        default=2,
        help="processes reading the client ends (0: none; nobody is woken, as with clients elsewhere)",
    )
    parser.add_argument(
        "--reader-priority", choices=PRIORITIES, default="idle", help="see bench/workers.py lower_priority"
    )
    main(parser.parse_args())
