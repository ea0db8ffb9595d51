"""`serve --workers N`: N server processes sharing one port, kept running by a small supervisor.

Each worker is a whole server (its own event loop, database pool and Redis connections) that
binds the public port with SO_REUSEPORT, so the kernel spreads new connections over them, and
takes its share of the channels like any other member of the cluster (docs/cluster.md). The
supervisor only starts them, restarts one that dies (a worker killed by the kernel's OOM killer,
say), and passes SIGTERM/SIGINT on, waiting for them to hand their channels over.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

WORKER_ENV = "BROADCASTER_WORKER"  # set in a worker's environment: its number, from 1
RESTART_DELAY_S = 1.0
QUICK_EXIT_S = 10  # a worker that dies this soon after starting, again and again, will not run at all
QUICK_EXITS = 5
STOP_WAIT_S = 30


def _die_with_parent() -> None:
    """In the child: SIGKILL when the supervisor dies, so no worker outlives it holding the port."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


class Supervisor:
    def __init__(self, argv: Sequence[str], count: int):
        self.argv = list(argv)  # the worker's command line, after the Python executable
        self.count = count
        self.workers: dict[int, tuple[subprocess.Popen, float]] = {}  # number -> process, started at
        self.quick_exits = 0
        self.stopping = False

    def _start(self, number: int) -> None:
        env = {**os.environ, WORKER_ENV: str(number)}
        process = subprocess.Popen([sys.executable, *self.argv], env=env, preexec_fn=_die_with_parent)
        self.workers[number] = (process, time.monotonic())
        log.info("worker %d started (pid %d)", number, process.pid)

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for number in range(1, self.count + 1):
            self._start(number)
        while not self.stopping:
            time.sleep(0.2)
            for number, (process, started) in list(self.workers.items()):
                if process.poll() is None or self.stopping:
                    continue
                if time.monotonic() - started < QUICK_EXIT_S:
                    self.quick_exits += 1
                    if self.quick_exits >= QUICK_EXITS:
                        log.critical("workers keep exiting at start-up (last: code %d); stopping", process.returncode)
                        self._end_all()
                        return 1
                else:
                    self.quick_exits = 0
                log.error(
                    "worker %d (pid %d) exited with code %d; restarting it", number, process.pid, process.returncode
                )
                time.sleep(RESTART_DELAY_S)
                self._start(number)
        self._end_all()
        return 0

    def _end_all(self) -> None:
        for process, _ in self.workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        for process, _ in self.workers.values():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in %d s; killing it", process.pid, STOP_WAIT_S)
                process.kill()
                process.wait()


def worker_number() -> int:
    """This process's worker number (1..N), or 0 when it is not a supervised worker."""
    value = os.environ.get(WORKER_ENV, "")
    return int(value) if value.isdigit() else 0
