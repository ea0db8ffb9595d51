"""One server (the embedded default) leaves out what only a cluster or a schema change needs."""

import subprocess
import sys

CLUSTER_ONLY = ("redis", "alembic")  # Redis's client is 7 MB of a server's memory, Alembic 11 MB


def test_one_server_imports_neither_redis_nor_alembic():
    """Everything `broadcaster serve` imports before it knows its configuration, in a fresh interpreter."""
    probe = f"import sys, web.cli, web.app, web.serve; print([m for m in {CLUSTER_ONLY!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", f"one server imports {loaded.strip()}: import them where a cluster needs them"
