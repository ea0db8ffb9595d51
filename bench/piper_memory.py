"""Piper's working memory and speed by sentence length: decoded whole, or a window at a time.

For each sentence length and each way of decoding, a fresh process (memory
figures would mix otherwise) tunes the allocator as the server does, loads
the bundled voice as the server does (`[tts] piper_window_ms`; 0 decodes each
sentence whole, the baseline), speaks a short sentence to warm up, then
speaks the measured sentence three times. It reports the peak resident
memory over the loaded voice (`VmHWM` less `VmRSS` after the warm-up) and
the synthesis speed (seconds of speech per second of wall time).

    .venv/bin/python bench/piper_memory.py [--lengths 40 100 200 300] [--windows 0 3000]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import own_memory_mb, table

PASSAGE = (
    "The old lighthouse keeper climbed the stairs slowly, counting each step as the storm gathered over "
    "the grey and restless sea, while far below the waves broke against the rocks and the gulls cried out "
    "in the wind and the rain and the dark, and the lamp above him turned and turned. "
) * 2
REPEATS = 3


def run_one(length: int, window_ms: int, cache_dir: str) -> dict:
    import asyncio

    from broadcaster.process import tune_allocator
    from tts.piper_engine import PiperEngine

    tune_allocator()

    async def measure() -> dict:
        engine = PiperEngine(window_ms=window_ms, cache_dir=Path(cache_dir))
        await engine.synthesize("Warm up.")
        await engine.idle()
        loaded = own_memory_mb()["VmRSS"]
        text = PASSAGE[:length].rsplit(" ", 1)[0] + "."
        started, speech_ms = time.perf_counter(), 0
        for _ in range(REPEATS):
            speech_ms += (await engine.synthesize(text)).duration_ms
        seconds = time.perf_counter() - started
        await engine.close()
        return {
            "chars": len(text),
            "speech_s": speech_ms / 1000 / REPEATS,
            "seconds": seconds / REPEATS,
            "speed": speech_ms / 1000 / seconds,
            "loaded": loaded,
            "peak": own_memory_mb()["VmHWM"] - loaded,
        }

    return asyncio.run(measure())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[40, 100, 200, 300])
    parser.add_argument("--windows", type=int, nargs="+", default=[0, 3000], help="piper_window_ms values")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement, in a child process
        length, window_ms, cache_dir = args.child
        print(json.dumps(run_one(int(length), int(window_ms), cache_dir)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="piper-memory-") as cache_dir:
        for length in args.lengths:
            baseline = None
            for window_ms in args.windows:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(length), str(window_ms), cache_dir],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                r = json.loads(out.strip().splitlines()[-1])
                baseline = baseline or r
                rows.append(
                    [
                        r["chars"],
                        f"{r['speech_s']:.1f} s",
                        window_ms or "whole",
                        f"{r['seconds']:.2f} s",
                        f"{r['speed']:.1f}x",
                        f"{r['speed'] / baseline['speed']:.2f}",
                        f"{r['loaded']:.0f}",
                        f"+{r['peak']:.0f}",
                        f"{r['peak'] / baseline['peak']:.2f}" if baseline["peak"] else "-",
                    ]
                )
                print(f"done: {rows[-1]}", flush=True)
    print()
    print(
        table(
            [
                "chars",
                "speech",
                "window ms",
                "synthesis",
                "speed",
                "speed vs whole",
                "loaded MB",
                "peak over loaded MB",
                "peak vs whole",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
