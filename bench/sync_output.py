"""Sync at the speaker: what listener pages actually play, recorded, against the server's timeline.

Runs the real server in this process, a PulseAudio daemon of its own with one sink per listener
(tests/speakers.py), and one headless Chromium per listener playing the real listener page into its
sink. Everything the sinks play is recorded in one stream on one clock, with the wall-clock time of
every sample, and every stretch of every chunk is found in each listener's recording. Three narrations,
one after another:

1. calm: N listeners, and M more who join mid-narration;
2. stalls: listener 0's output is stopped for --stall-ms (its sink suspended) at --stalls moments;
3. load: `stress-ng --cpu 2` runs for --stress-s seconds in the middle of the narration.

Prints the inter-listener skew and the error against the timeline, each stall's recovery, clicks,
and the skew under load and after it, against the targets in docs/performance.md.

The rig's own error is measured in the same run: during the calm narration a plain PulseAudio
client (a process of its own, so that nothing holds it up) on a sink of its own writes a click every 0.5 s just after asking its stream's latency, and
each is found in the recording. PulseAudio's latency reports, which the browsers' output timestamps
come from too, are what both go by; how far off those clicks are heard (about a millisecond in some
runs, a tenth in others) bounds what the pages' mean error can say.

    apt-get install pulseaudio stress-ng chromium
    .venv/bin/python bench/sync_output.py [--listeners 3] [--late 1] [--engine tone|piper] [--stalls 4]
                                          [--stall-ms 150] [--stress-s 30] [--settle-s 8] [--piper-nice N]
                                          [--buffer small|large] [--audio-priority desktop|realtime]
                                          [--rate 48000|50000]

`--buffer large` opens every page as a browser whose listener chose the larger output buffer
(web/static/buffer.js) would: on it from the start. Each page's buffer is printed.
`--audio-priority realtime` runs each browser's thread that feeds PulseAudio, and PulseAudio's main
thread, at realtime priority, as a machine tuned for audio would (`PulseServer.realtime_audio`; needs
root or CAP_SYS_NICE); as they come ("desktop", the default) both run at normal priority.
`--rate 50000` runs the sinks, and so every browser's output, at 50 kHz. PulseAudio's null sink moves
its clock on by each block it renders rounded down to a whole microsecond: at 48 kHz (20.83 us a
frame) it runs fast by an amount that depends on how the streams happen to write (0-140 ppm with
`pacat`, 600-900 ppm with the browsers) and changes as streams come and go, which no sound card's
crystal does; at 50 kHz a frame is exactly 20 us and the sink keeps the machine's time.
"""

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import websockets
from harness import running_server  # first: it puts the project and tests/ on sys.path

# isort: split
from chromium import chromium_path
from playwright.async_api import async_playwright
from speakers import (
    Heard,
    Listeners,
    PipeWireServer,
    PulseServer,
    Recording,
    chunk_audio,
    clicks,
    clicks_in_own_process,
    clicks_off_ms,
    follow,
    heard_jumps_s,
    near_glitch,
    percentile,
    recovery,
    skews_ms,
    stop_recording,
    together_again_ms,
)
from texts import HARBOUR

from broadcaster.client import submit

TONE = {"tts": {"engine": "tone", "tone_ms_per_char": 55}}
PIPER = {"tts": {"engine": "piper"}}
TIMELINE = {"timeline": {"lead_ms": 800, "sentence_gap_ms": 250, "request_gap_ms": 600}}
REFERENCE_S = 12  # the rig's reference clicks play through the calm narration's first 12 s
# What a browser whose listener chose the larger buffer keeps (web/static/buffer.js); ~90 ms on this rig.
CHOSE_LARGE = 'localStorage.setItem("broadcaster.outputBuffer", JSON.stringify({extraMs: 90}));'


@dataclass
class Narration:
    chunks: list[dict] = field(default_factory=list)  # audio_chunk_ready messages
    events: dict[str, list] = field(default_factory=dict)  # what was done during it, with wall-clock times


async def narrate(server, text: str, during) -> Narration:
    """Post `text`, run `during(first_chunk, narration)` once its first chunk is announced, and return
    when the request has played."""
    narration = Narration()
    async with websockets.connect(server.ws_url) as ws:
        _, body = await submit(server.base_url, server.channel, text, server.token)
        task = None
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "audio_chunk_ready" and message["request_id"] == body["request_id"]:
                narration.chunks.append(message)
                if task is None:
                    task = asyncio.create_task(during(message, narration))
            if message["type"] == "request_played" and message["request_id"] == body["request_id"]:
                break
        await task
    return narration


async def until(wall_s: float) -> None:
    await asyncio.sleep(max(0.0, wall_s - time.time()))


def late_joins(listeners: Listeners, late: list[int]):
    async def during(first: dict, narration: Narration) -> None:
        for i, listener in enumerate(late):
            await until(first["starts_at_ms"] / 1000 + 1.2 + 2.5 * i)  # in the middle of a sentence
            await listeners.open(listener)
            narration.events.setdefault("joined", []).append((listener, time.time()))

    return during


def stalls(pulse: PulseServer, count: int, stall_ms: int):
    async def during(first: dict, narration: Narration) -> None:
        at = first["starts_at_ms"] / 1000 + 1.0
        for _ in range(count):
            await until(at + random.uniform(0, 0.8))
            narration.events.setdefault("stalls", []).append(await pulse.stall(0, stall_ms))
            at = time.time() + 3.5  # room to watch the recovery

    return during


def load(seconds: int):
    async def during(first: dict, narration: Narration) -> None:
        await until(first["starts_at_ms"] / 1000 + 2.0)
        began = time.time()
        proc = await asyncio.create_subprocess_exec(
            "stress-ng", "--cpu", "2", "--timeout", f"{seconds}s", "--quiet",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await proc.wait()
        narration.events["load"] = [(began, time.time())]

    return during


async def heard_in(recording: Recording, http, base_url: str, narration: Narration, listeners: list[int]):
    heard: dict[int, list[Heard]] = {i: [] for i in listeners}
    for chunk in narration.chunks:
        audio = await chunk_audio(http, base_url, chunk["chunk_id"], recording.rate)
        for i in listeners:
            heard[i] += await asyncio.to_thread(follow, recording, i, chunk["chunk_id"], audio, chunk["starts_at_ms"])
    return heard


def line(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:44s} (nothing measured)"
    return (
        f"{name:44s} p50 {percentile(values, 50):7.2f}  p95 {percentile(values, 95):7.2f}  "
        f"max {max(values):7.2f} ms  ({len(values)} stretches)"
    )


def report_buffers(pages: list[dict]) -> None:
    for i, page in enumerate(pages):
        buffer = page["buffer"]
        large = buffer["hint"] != "playback"
        print(
            f"page {i}: "
            + (f"the larger output buffer (+{buffer['extraMs']} ms)" if large else "the 'playback' buffer")
        )


def report_calm(heard: dict[int, list[Heard]], late: list[int], pages: list[dict], reference_ms: list[float]) -> None:
    print("\n1. calm narration")
    print(line("inter-listener skew, late joiners included", skews_ms(heard)))
    print(line("the same, the pages open from the start", skews_ms(heard, [i for i in heard if i not in late])))
    glitches = [g["atLocalMs"] / 1000 for page in pages for g in page["glitch_log"]]
    began, ended = min(h.heard_s for f in heard.values() for h in f), max(h.heard_s for f in heard.values() for h in f)
    glitches = sorted(g for g in glitches if began - 1 <= g <= ended)
    clear = {i: [h for h in found if not near_glitch(h.heard_s, glitches)] for i, found in heard.items()}
    print(line(f"the same away from glitches ({len(glitches)} detected)", skews_ms(clear)))
    jumped = sorted(at_s for found in heard.values() for at_s in heard_jumps_s(found))
    steady = {i: [h for h in found if not near_glitch(h.heard_s, glitches + jumped)] for i, found in heard.items()}
    print(line(f"  and from jumps heard ({len(jumped)})", skews_ms(steady)))
    errors = [h.error_ms for found in heard.values() for h in found]
    print(line("|error| against the timeline", [abs(e) for e in errors]))
    mean_ms = sum(errors) / max(len(errors), 1)
    print(f"{'mean error against the timeline':44s} {mean_ms:+7.2f} ms")
    if reference_ms:
        rig_ms = sum(reference_ms) / len(reference_ms)
        print(
            f"{'the rig: clicks of a plain PulseAudio client':44s} {rig_ms:+7.2f} ms  "
            f"(from {min(reference_ms):+.2f} to {max(reference_ms):+.2f}, {len(reference_ms)} clicks)"
        )
        print(f"{'mean error less the rig':44s} {mean_ms - rig_ms:+7.2f} ms")
    for listener in late:
        first = heard[listener][:1]
        print(
            f"{'late joiner ' + str(listener) + ': first stretch heard':44s} {first[0].error_ms:+7.2f} ms"
            if first
            else ""
        )


def report_stalls(heard: dict[int, list[Heard]], recording: Recording, narration: Narration, pages: list[dict]) -> None:
    print("\n2. output stalls on listener 0")
    others = [i for i in heard if i != 0]
    print(line("skew between the other listeners meanwhile", skews_ms(heard, others)))
    found = sorted(heard[0], key=lambda h: h.heard_s)
    snaps = clicks(recording, 0)
    for began, resumed in narration.events.get("stalls", []):
        r = recovery(found, resumed)
        near = [t for t in snaps if resumed + 0.01 < t <= resumed + 1.0]  # beyond the stall's own two edges
        back = "never" if r.back_in_ms is None else f"{r.back_in_ms:.0f} ms"
        print(
            f"stall of {(resumed - began) * 1000:.0f} ms: error before {r.error_before_ms:+.1f} ms, worst after "
            f"{r.worst_ms:.1f} ms, back within 5 ms in {back}, overshoot after {r.overshoot_ms:.1f} ms, "
            f"clicks after it {len(near)}"
        )
    print(f"clicks anywhere in listener 0's output: {len(snaps)}")
    for i, page in enumerate(pages):
        print(
            f"page {i} reports: {page['glitches']} glitches, {page['crossfades']} crossfades, {page['ppm']:+.0f} ppm; "
            f"its line against its own output readings: p95 {percentile(off_line_ms(page), 95):.2f} ms; "
            f"{chromium_underruns(page)}"
        )


def chromium_underruns(page: dict) -> str:
    """What the browser itself counted (AudioContext.playbackStats, where it has it): underruns of the
    audio it rendered, so a shift heard that neither it nor the page counted happened below it."""
    stats = page["chromium"]
    if stats is None:
        return "the browser keeps no playback statistics"
    return f"the browser counted {stats['events']} underruns ({stats['seconds'] * 1000:.0f} ms)"


def off_line_ms(page: dict) -> list[float]:
    """How far each output reading was from the line the page had fitted (web/static/output.js): small
    means the page follows what the browser tells it, and any error heard is in what it is told."""
    return [abs(ctx - line) * 1000 for _, ctx, line in page["output_log"] if line is not None] or [0.0]


def report_load(heard: dict[int, list[Heard]], narration: Narration) -> None:
    print("\n3. CPU load (stress-ng --cpu 2)")
    began, ended = narration.events["load"][0]
    during = {i: [h for h in found if began <= h.heard_s <= ended] for i, found in heard.items()}
    print(line("inter-listener skew under load", skews_ms(during)))
    print(line("|error| under load", [abs(h.error_ms) for found in during.values() for h in found]))
    after_ms = together_again_ms(heard, ended, 2.0)
    settled = "not within the watch" if after_ms is None else f"{after_ms:.0f} ms"
    print(f"{'back within 2 ms of each other after the load':44s} {settled}")


def dump(path: str, heard: dict, narrations: dict, pages: list[dict], reference_ms: list[float]) -> None:
    """Everything measured, for a closer look: each stretch heard, and what was done when."""
    out = {
        "heard": {
            name: {
                i: [[h.chunk_id, h.offset_ms, h.due_s, h.heard_s, h.score] for h in found] for i, found in by.items()
            }
            for name, by in heard.items()
        },
        "events": {name: n.events for name, n in narrations.items() if n is not None},
        "pages": pages,
        "reference_clicks_ms": reference_ms,  # the rig's own error, in the calm narration
    }
    Path(path).write_text(json.dumps(out))


async def page_report(page) -> dict:
    return await page.evaluate(
        "({glitches: window.broadcaster.output.glitchCount, crossfades: window.broadcaster.player.crossfades,"
        " ppm: Math.round(window.broadcaster.output.ratePpm), glitch_log: window.broadcaster.output.glitches,"
        " correction_log: window.broadcaster.player.corrections, trace: window.broadcaster.player.trace,"
        " output_log: window.broadcaster.output.log, buffer: window.broadcaster.outputBuffer,"
        " sync: window.broadcaster.stats.sync, chromium: window.broadcaster.output.ctx.playbackStats ?"
        " {events: window.broadcaster.output.ctx.playbackStats.underrunEvents,"
        " seconds: window.broadcaster.output.ctx.playbackStats.underrunDuration} : null})"
    )


async def main(args: argparse.Namespace) -> None:
    settings = {**(PIPER if args.engine == "piper" else TONE), **TIMELINE}
    if args.piper_nice is not None:
        settings["tts"] = settings["tts"] | {"piper_nice": args.piper_nice}
    everyone = list(range(args.listeners + args.late))
    late = everyone[args.listeners :]
    with tempfile.TemporaryDirectory() as work:
        reference = len(everyone)  # the sink of the plain client whose clicks measure the rig itself
        pulse = (PipeWireServer if args.rig == "pipewire" else PulseServer)(Path(work), reference + 1, args.rate)
        pulse.start()
        try:
            async with (
                running_server(settings) as server,
                async_playwright() as pw,
                aiohttp.ClientSession() as http,
            ):
                listeners = Listeners(
                    pw,
                    pulse,
                    f"{server.base_url}/c/{server.channel}",
                    args.chromium,
                    init_script=CHOSE_LARGE if args.buffer == "large" else "",
                    realtime=args.audio_priority == "realtime",
                )
                for i in everyone[: args.listeners]:
                    await listeners.open(i)
                recorder = pulse.recorder()
                recorder.start()
                # The recorder's first second does not count towards its clock; and a page's first seconds
                # of output are not yet steady (its timestamps move by milliseconds while the output settles):
                # the late joiners measure those.
                await asyncio.sleep(max(1.5, args.settle_s))
                text = " ".join(HARBOUR)
                clicking = asyncio.create_task(clicks_in_own_process(pulse, reference, REFERENCE_S))
                calm = await narrate(server, text, late_joins(listeners, late))
                reported = await clicking
                stalled = await narrate(server, text, stalls(pulse, args.stalls, args.stall_ms))
                stalled_pages = [await page_report(listeners.pages[i]) for i in everyone]
                loaded = await narrate(server, " ".join(HARBOUR * 2), load(args.stress_s)) if args.stress_s else None
                pages = [await page_report(listeners.pages[i]) for i in everyone]
                recording = await stop_recording(recorder, pulse)
                await listeners.close()
                print(f"recorded {len(recording.samples) / args.rate:.0f} s of {len(everyone)} listeners at "
                      f"{args.rate} Hz; output clock {(recording.clock.rate_hz / args.rate - 1) * 1e6:+.0f} ppm "
                      "against the wall clock")  # fmt: skip
                heard = {
                    name: await heard_in(recording, http, server.base_url, narration, everyone)
                    for name, narration in (("calm", calm), ("stalls", stalled), ("load", loaded))
                    if narration is not None
                }
                report_buffers(pages)
                if args.audio_priority == "realtime":
                    raised = listeners.realtime_threads
                    print(f"audio path at realtime priority: {raised} threads" if raised else
                          "audio path at realtime priority: NOT RAISED (no permission), as on a desktop")  # fmt: skip
                reference_ms = clicks_off_ms(recording, reference, reported)
                report_calm(heard["calm"], late, pages, reference_ms)
                report_stalls(heard["stalls"], recording, stalled, stalled_pages)
                if loaded:
                    report_load(heard["load"], loaded)
                if args.dump:
                    dump(args.dump, heard, {"stalls": stalled, "load": loaded}, pages, reference_ms)
        finally:
            pulse.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=3)
    parser.add_argument("--late", type=int, default=1, help="more listeners who join mid-narration")
    parser.add_argument("--engine", choices=["tone", "piper"], default="tone")
    parser.add_argument("--piper-nice", type=int, help="[tts] piper_nice (default: the server's)")
    parser.add_argument("--stalls", type=int, default=4)
    parser.add_argument("--stall-ms", type=int, default=150)
    parser.add_argument("--stress-s", type=int, default=30, help="0: no load phase")
    parser.add_argument("--settle-s", type=float, default=8, help="from the last page opened to the narration")
    parser.add_argument("--rig", choices=["pulseaudio", "pipewire"], default="pulseaudio")
    parser.add_argument(
        "--rate",
        type=int,
        default=48_000,
        help="the sinks' sample rate; at 50000 (20 us a frame) PulseAudio's null sink keeps the machine's time",
    )
    parser.add_argument(
        "--buffer", choices=["small", "large"], default="small", help="large: as browsers whose listener chose it"
    )
    parser.add_argument(
        "--audio-priority",
        choices=["desktop", "realtime"],
        default="desktop",
        help="realtime: the browsers' output threads and PulseAudio's main thread at realtime priority",
    )
    parser.add_argument("--dump", help="write every stretch heard, as JSON, to this file")
    parser.add_argument("--chromium", default=chromium_path() or shutil.which("chromium"))
    asyncio.run(main(parser.parse_args()))
