"""How Piper's worker count and onnxruntime's memory arena trade speed for memory.

Each configuration runs in a fresh process (memory figures would mix otherwise):
load the bundled voice, synthesize the same twelve sentences with W workers,
and report speed (seconds of audio per second of wall time) and resident
memory after loading, after the run (with and without giving freed heap
back), and at the peak. The baseline is Piper's own default: its session
options, one worker.

    .venv/bin/python bench/piper_settings.py
"""

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import own_memory_mb, table

SENTENCES = [
    "The old lighthouse keeper climbed the stairs slowly, counting each step as the storm rolled in.",
    "Nobody in the village remembered when the bell had last rung.",
    "Roll for initiative!",
    "Far to the north, beyond the frozen lakes, the wolves were gathering under a pale moon, and the hunters knew it.",
] * 3
CONFIGS = [  # workers, arena, give memory back after the run
    (1, True, False),
    (2, True, False),
    (1, False, False),
    (1, False, True),
    (2, False, True),
]


def run_one(workers: int, arena: bool, trim: bool) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from broadcaster.process import release_free_memory
    from tts.piper_engine import _load_voice, default_model_path

    voice = _load_voice(default_model_path(), arena)
    loaded = own_memory_mb()["VmRSS"]
    rate = voice.config.sample_rate

    def say(text: str) -> int:
        return sum(len(part.audio_int16_array) for part in voice.synthesize(text))

    say("Warm up.")
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        samples = sum(pool.map(say, SENTENCES))
    seconds = time.perf_counter() - started
    after = own_memory_mb()
    if trim:
        release_free_memory()
    return {
        "speed": samples / rate / seconds,
        "loaded": loaded,
        "after": after["VmRSS"],
        "settled": own_memory_mb()["VmRSS"],
        "peak": after["VmHWM"],
    }


def main() -> None:
    if len(sys.argv) == 4:  # one configuration, in a child process
        print(json.dumps(run_one(int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1")))
        return
    rows, baseline = [], None
    for workers, arena, trim in CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, str(workers), str(int(arena)), str(int(trim))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
        baseline = baseline or result["speed"]
        rows.append(
            [
                workers,
                "on" if arena else "off",
                "yes" if trim else "no",
                f"{result['speed']:.1f}x",
                f"{result['speed'] / baseline:.2f}",
                f"{result['loaded']:.0f}",
                f"{result['after']:.0f}",
                f"{result['settled']:.0f}",
                f"{result['peak']:.0f}",
            ]
        )
        print(f"done: {rows[-1]}", flush=True)
    print()
    print(
        table(["workers", "arena", "trim", "speed", "vs first", "loaded MB", "after MB", "settled MB", "peak MB"], rows)
    )


if __name__ == "__main__":
    main()
