"""Lead that follows the audience: how many listeners have a narration's first sentence in hand before it sounds.

A narration that starts on an idle channel is placed one lead ahead of now:
its listeners must fetch and decode the first sentence in that time, or they
join it part-way through and miss its beginning. This runs the real server
as its own process (tone engine, a temporary data dir, per-address caps off)
twice: first with a fixed lead (`[timeline] max_lead_ms = lead_ms = 500`,
the baseline), then with the default lead that follows what listeners report
(up to 3000 ms). Each time it connects N browser-like listeners from worker
processes (bench/listeners.py: they fetch every announced chunk over at most
6 connections each and acknowledge it with when it was in hand), then submits
K short narrations one at a time, each once the previous has played and the
channel has been idle a moment. Per narration it prints the lead (from the
first chunk's announcement reaching a socket of our own to its start), how
many fetches were in hand only after their chunk started, and the fetch
times. The first narration on each server has no reports to go by yet.

    .venv/bin/python bench/lead.py [--listeners 1000] [--narrations 6] [--workers 4]
"""

import argparse
import asyncio

import aiohttp
from listeners import Behaviour, ListenerWorker, merge_reports
from report import percentile, table
from serverproc import ServerProcess, narrate, raise_nofile, scrape_gauges, wait_listeners, with_uncapped_limits
from workers import WorkerPool, split

CHANNEL = "bench"
FLOOR_MS = 500
TIMELINE = {"fixed": {"lead_ms": FLOOR_MS, "max_lead_ms": FLOOR_MS}, "follows listeners": {"lead_ms": FLOOR_MS}}
LEAD = f'broadcaster_lead_seconds{{channel="{CHANNEL}"}}'
IDLE_S = 3.0  # after each narration: the last acknowledgements land, and the next starts on an idle channel


def text(k: int) -> str:
    return f"Narration {k + 1} begins here. A second sentence follows it."


async def run_mode(mode: str, args: argparse.Namespace) -> list[list]:
    settings = with_uncapped_limits({"tts": {"engine": "tone", "tone_ms_per_char": 30}, "timeline": TIMELINE[mode]})
    server = ServerProcess(settings)
    rows = []
    try:
        token = (await server.create_channels([CHANNEL]))[CHANNEL]
        await server.start()
        pool = WorkerPool(args.workers, ListenerWorker, "127.0.0.1", server.port)
        try:
            async with aiohttp.ClientSession() as http:
                behaviour = Behaviour()
                connected = sum(
                    await pool.call("start", [([CHANNEL] * n, behaviour) for n in split(args.listeners, len(pool))])
                )
                await wait_listeners(http, server.base_url, CHANNEL, connected, timeout_s=60)
                await asyncio.sleep(IDLE_S)
                await pool.call("report")  # from here on: the narrations' fetches only
                for k in range(args.narrations):
                    story = await narrate(server, http, token, CHANNEL, text(k))
                    await asyncio.sleep(IDLE_S)
                    load = merge_reports(await pool.call("report"))
                    lead_s = (await scrape_gauges(http, server.base_url, [LEAD]))[LEAD]
                    rows.append(row(mode, k, story, load, lead_s))
                    print("  " + "  ".join(str(cell) for cell in rows[-1][1:]), flush=True)
            await pool.call("stop")
        finally:
            await pool.close()
        print(server.problems())
    finally:
        server.remove(keep=args.keep)
    return rows


def row(mode: str, k: int, story: dict, load: dict, lead_after_s: float) -> list:
    spare = load["fetch_spare_ms"]  # one per fetch that succeeded, since the last report
    late = sum(1 for s in spare if s < 0)
    return [
        mode,
        k + 1,
        f"{story['lead_ms']:.0f}",
        f"{late} / {len(spare)}",
        f"{percentile(load['fetch_ms'], 50):.0f}",
        f"{percentile(load['fetch_ms'], 99):.0f}",
        f"{-min(spare, default=0):.0f}" if late else "-",
        f"{lead_after_s * 1000:.0f}",
        story["outcome"],
    ]


def summary(rows: list[list]) -> None:
    """Late fetches after the first narration of each server: the baseline's against the adaptive lead's."""
    late = {}
    for mode in TIMELINE:
        counts = [tuple(map(int, r[3].split(" / "))) for r in rows if r[0] == mode and r[1] > 1]
        late[mode] = (sum(c[0] for c in counts), sum(c[1] for c in counts))
    (base_late, base_all), (new_late, new_all) = late["fixed"], late["follows listeners"]
    print(
        f"\nfetches in hand only after their chunk started, narrations 2 and later: fixed lead {base_late} of "
        f"{base_all} ({base_late / max(base_all, 1):.1%}), lead that follows listeners {new_late} of {new_all} "
        f"({new_late / max(new_all, 1):.1%})"
    )


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    rows = []
    for mode in TIMELINE:
        print(f"\n{mode} lead, {args.listeners} listeners:", flush=True)
        rows += await run_mode(mode, args)
    print()
    print(
        table(
            [
                "lead",
                "narration",
                "lead at our socket ms",
                "late fetches / all",
                "fetch p50 ms",
                "fetch p99 ms",
                "latest by ms",
                "lead after ms",
                "outcome",
            ],
            rows,
        )
    )
    summary(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=1000)
    parser.add_argument("--narrations", type=int, default=6)
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument("--keep", action="store_true", help="keep the servers' data dirs and logs")
    asyncio.run(main(parser.parse_args()))
