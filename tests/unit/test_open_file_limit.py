"""`serve` lifts its soft limit on open files to the hard one: each listener holds two descriptors."""

import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def limits_after_raising(soft: int) -> dict:
    """In a child started with the given soft limit: (before, after) and the limit it then has."""
    code = (
        "import json, resource; from broadcaster.process import raise_open_file_limit; "
        "print(json.dumps([raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)]))"
    )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    (before, after), now = json.loads(out.stdout)
    return {"before": before, "after": after, "now": now, "hard": hard}


def test_a_low_soft_limit_is_lifted_to_the_hard_one():
    got = limits_after_raising(256)
    assert got["hard"] > 256, "this machine's hard limit must allow more than 256 for the test to mean anything"
    assert got["before"] == 256 and got["after"] == got["now"][0] == got["hard"]


def test_a_soft_limit_already_at_the_hard_one_is_left_alone():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    got = limits_after_raising(hard)
    assert got["before"] == got["after"] == got["now"][0] == hard
