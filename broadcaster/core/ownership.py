"""Which channels one process should run in a cluster, decided from what it can see: no I/O here.

Each round (a third of the lease) a process renews the channel leases it holds, steps down from
those it could not renew in time, gives back what is over its fair share, and takes channels
nobody holds, up to that share. The fair share is the number of channels over the number of
live processes, rounded up, so channels spread as processes come and go.

Stepping down is decided on the process's own monotonic clock, from when the last renewal that
succeeded was *sent*: the database set that lease's expiry no earlier than that moment plus the
lease, so a holder that stops two thirds of the way through stops before anyone can think the
lease lapsed, however long its renewals now take.
"""

from dataclasses import dataclass, field

STEP_DOWN_AT = 2 / 3  # of the lease, since the last renewal that succeeded was sent


@dataclass(frozen=True)
class Plan:
    renew: list[str] = field(default_factory=list)
    step_down: list[str] = field(default_factory=list)  # could not renew in time: stop at once
    release: list[str] = field(default_factory=list)  # over the fair share: hand over cleanly
    acquire: list[str] = field(default_factory=list)


def fair_share(channels: int, processes: int) -> int:
    return -(-channels // max(1, processes))


def plan_round(
    lease_ms: int,
    now_ms: float,
    held: dict[str, float],
    channels: list[str],
    held_elsewhere: set[str],
    processes: int,
    idle: set[str],
) -> Plan:
    """`held`: channel -> when its last successful renewal was sent (this process's monotonic ms).
    `idle`: held channels with nothing on the air, the only ones given back to rebalance."""
    late = sorted(name for name, sent_ms in held.items() if now_ms - sent_ms >= lease_ms * STEP_DOWN_AT)
    keep = sorted(name for name in held if name not in late)
    share = fair_share(len(channels), processes)
    surplus = max(0, len(keep) - share)
    release = [name for name in reversed(keep) if name in idle][:surplus]
    renew = [name for name in keep if name not in release]
    free = [name for name in sorted(channels) if name not in held and name not in held_elsewhere]
    acquire = free[: max(0, share - len(renew))]
    return Plan(renew=renew, step_down=late, release=release, acquire=acquire)
