"""Many channels narrating with Piper at once: where does the timeline start to slip?

Starts the real server as its own process (Piper by default, a temporary data
dir) with enough channels, then for each round of N channels POSTs a
paragraph of 6 to 10 sentences to each of them at the same moment and
follows every channel on one WebSocket until its narration has played. Per
channel it counts underruns (`timeline_shifted`: a sentence was not ready
lead_ms / 2 before it was due, so the timeline slipped), the worst and total
slip, the time to first audio (POST sent to the first chunk's
`starts_at_ms`), and the generation lead of each later sentence (its
`starts_at_ms` minus when it was announced, which for the request on the air
is when it was ready). The baseline is a round with one channel, in the same
run and on the same server. The aim: 20 channels without an underrun.

    .venv/bin/python bench/channels.py [--channels 20] [--channels 5 10 20] [--engine piper|tone]
"""

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp
from report import percentile, table
from serverproc import ServerProcess, raise_nofile, tcp_counters, tcp_summary, with_uncapped_limits
from texts import paragraph

LEAD_MS = 500  # the server's default [timeline] lead_ms; the config below does not change it
ENDED = ("request_played", "request_failed", "request_cancelled")
SLOW_START_MS = 5000  # first audio later than this is worth pointing out


@dataclass
class Channel:
    name: str
    token: str
    text: str = ""
    sent_ms: float = 0.0
    request_id: str = ""
    events: list[tuple[float, dict]] = field(default_factory=list)  # (received_ms, message) for the request

    def of_type(self, kind: str) -> list[tuple[float, dict]]:
        return [(at, e) for at, e in self.events if e["type"] == kind]

    @property
    def outcome(self) -> str:
        ended = [e["type"] for _, e in self.events if e["type"] in ENDED]
        return ended[0].removeprefix("request_") if ended else "unfinished"

    @property
    def ttfa_ms(self) -> float:
        started = self.of_type("audio_stream_started")
        return started[0][1]["starts_at_ms"] - self.sent_ms if started else float("nan")

    @property
    def shifts(self) -> list[int]:
        return [e["shift_ms"] for _, e in self.of_type("timeline_shifted")]

    @property
    def leads_ms(self) -> list[float]:
        """For each sentence after the first: how long before it was due it was ready (announced)."""
        return [e["starts_at_ms"] - at for at, e in self.of_type("audio_chunk_ready") if e["seq"] > 0]

    @property
    def generated_after_ms(self) -> float:
        """From the POST to the announcement of the last sentence: synthesis of the whole paragraph."""
        chunks = self.of_type("audio_chunk_ready")
        return chunks[-1][0] - self.sent_ms if chunks else float("nan")

    @property
    def audio_ms(self) -> int:
        return sum(e["duration_ms"] for _, e in self.of_type("audio_chunk_ready"))


async def follow(
    http: aiohttp.ClientSession, ws_url: str, channel: Channel, ready: asyncio.Event, done: asyncio.Event
) -> None:
    """Record the events of this channel's request, from before its POST until it has ended."""
    async with http.ws_connect(ws_url, heartbeat=None) as ws:
        ready.set()
        async for msg in ws:
            at = time.time() * 1000
            event = json.loads(msg.data)
            if channel.request_id and event.get("request_id") == channel.request_id:
                channel.events.append((at, event))
                if event["type"] in ENDED:
                    break
            elif event.get("request_id") and not channel.request_id:
                channel.events.append((at, event))  # before the POST's answer: sorted out in submit()
    done.set()


async def submit(http: aiohttp.ClientSession, base_url: str, channel: Channel) -> None:
    channel.sent_ms = time.time() * 1000
    async with http.post(
        f"{base_url}/api/channels/{channel.name}/requests",
        json={"text": channel.text},
        headers={"Authorization": f"Bearer {channel.token}"},
    ) as resp:
        body = await resp.json()
    if resp.status != 202:
        raise RuntimeError(f"expected 202 from {channel.name}, got {resp.status}: {body}")
    channel.request_id = body["request_id"]
    channel.events = [(at, e) for at, e in channel.events if e.get("request_id") == channel.request_id]


async def run_round(
    http: aiohttp.ClientSession, server: ServerProcess, tokens: dict[str, str], count: int, timeout_s: float
) -> list[Channel]:
    names = sorted(tokens)[:count]
    channels = [Channel(name, tokens[name], paragraph(i)) for i, name in enumerate(names)]
    ws_base = server.base_url.replace("http", "ws")
    ready = [asyncio.Event() for _ in channels]
    done = [asyncio.Event() for _ in channels]
    followers = [
        asyncio.create_task(follow(http, f"{ws_base}/ws/channels/{c.name}", c, r, d))
        for c, r, d in zip(channels, ready, done)
    ]
    await asyncio.gather(*(r.wait() for r in ready))
    await asyncio.sleep(0.5)  # let the snapshots and listener counts go by
    await asyncio.gather(*(submit(http, server.base_url, c) for c in channels))  # the same moment
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(d.wait() for d in done))
    except TimeoutError:
        print(f"  ({sum(not d.is_set() for d in done)} channels had not finished after {timeout_s:g} s)")
    for task in followers:
        task.cancel()
    await asyncio.gather(*followers, return_exceptions=True)
    return channels


def summary_row(channels: list[Channel], baseline_ttfa: float) -> list:
    shifts = [s for c in channels for s in c.shifts]
    leads = [lead for c in channels for lead in c.leads_ms]
    ttfa = [c.ttfa_ms for c in channels]
    audio_s = sum(c.audio_ms for c in channels) / 1000
    wall_s = max(c.generated_after_ms for c in channels) / 1000
    return [
        len(channels),
        len(shifts),
        sum(1 for c in channels if c.shifts),
        max(shifts, default=0),
        sum(shifts),
        percentile(ttfa, 50),
        max(ttfa),
        f"{percentile(ttfa, 50) / baseline_ttfa:.1f}x",
        min(leads, default=float("nan")),
        max(leads, default=float("nan")),
        f"{audio_s / wall_s:.1f}x" if wall_s > 0 else "-",
        ", ".join(f"{o} {n}" for o, n in _outcomes(channels).items()),
    ]


def _outcomes(channels: list[Channel]) -> dict[str, int]:
    found: dict[str, int] = {}
    for c in channels:
        found[c.outcome] = found.get(c.outcome, 0) + 1
    return found


def channel_rows(channels: list[Channel]) -> list[list]:
    return [
        [
            c.name,
            len(c.of_type("audio_chunk_ready")),
            len(c.shifts),
            max(c.shifts, default=0),
            sum(c.shifts),
            c.ttfa_ms,
            min(c.leads_ms, default=float("nan")),
            max(c.leads_ms, default=float("nan")),
            c.generated_after_ms / 1000,
            c.audio_ms / 1000,
            c.outcome,
        ]
        for c in channels
    ]


def report(rounds: list[list[Channel]], engine: str) -> None:
    baseline = rounds[0][0].ttfa_ms
    for channels in rounds[1:]:
        print(f"\n{len(channels)} channels at once, per channel (ms unless marked):")
        print(
            table(
                [
                    "channel",
                    "sentences",
                    "underruns",
                    "worst slip",
                    "total slip",
                    "TTFA",
                    "min lead",
                    "max lead",
                    "generated after s",
                    "audio s",
                    "outcome",
                ],
                channel_rows(channels),
            )
        )
    print(
        f"\nsummary ({engine} engine; lead_ms {LEAD_MS}: a sentence ready less than {LEAD_MS // 2} ms "
        f"before it is due is an underrun; the 1-channel row is the baseline)\n"
    )
    print(
        table(
            [
                "channels",
                "underruns",
                "channels hit",
                "worst slip ms",
                "total slip ms",
                "TTFA p50 ms",
                "TTFA max ms",
                "TTFA p50 vs 1",
                "min lead ms",
                "max lead ms",
                "synthesis speed",
                "outcomes",
            ],
            [summary_row(channels, baseline) for channels in rounds],
        )
    )
    print(
        "\nlead: starts_at_ms minus the time the sentence was announced (ready), sentences after the first;"
        "\nsynthesis speed: seconds of audio made per second of wall time, all channels together;"
        "\ngenerated after: POST to the last sentence's announcement"
    )
    for channels in rounds:
        hit = sum(1 for c in channels if c.shifts)
        slow = sorted(c.ttfa_ms / 1000 for c in channels if c.ttfa_ms > SLOW_START_MS)
        if hit:
            print(
                f"{len(channels)} channels: {hit} of them slipped ({sum(len(c.shifts) for c in channels)} "
                f"underruns) - the aim of no underrun at 20 channels is not met at this size"
            )
        if slow:
            print(
                f"{len(channels)} channels: {len(slow)} waited more than {SLOW_START_MS / 1000:g} s for first "
                f"audio (up to {slow[-1]:.1f} s)"
            )


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    tcp_before = tcp_counters()
    counts = sorted(set(args.channels))
    server = ServerProcess(with_uncapped_limits({"tts": {"engine": args.engine}}))
    try:
        tokens = await server.create_channels([f"ch{i:02d}" for i in range(max(counts))])
        await server.start()
        rounds = []
        async with aiohttp.ClientSession() as http:
            for count in [1, *counts]:
                channels = await run_round(http, server, tokens, count, args.timeout)
                shifts = sum(len(c.shifts) for c in channels)
                print(
                    f"{count} channels: {shifts} underruns, TTFA p50 "
                    f"{percentile([c.ttfa_ms for c in channels], 50):.0f} ms",
                    flush=True,
                )
                rounds.append(channels)
                await asyncio.sleep(2)
        report(rounds, args.engine)
        print(tcp_summary(tcp_before))
        print(server.problems())
    finally:
        server.remove(keep=args.keep)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[20], help="channel counts, one round each")
    parser.add_argument("--engine", choices=["piper", "tone"], default="piper")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for a round to play out")
    parser.add_argument("--keep", action="store_true", help="keep the server's data dir and log")
    asyncio.run(main(parser.parse_args()))
