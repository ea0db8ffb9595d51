"""Debian's Chromium as the tests and benchmarks start it (never a downloaded one)."""

import os
import shutil

FLAGS = [
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    return os.environ.get("BROADCASTER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
