"""`python -m broadcaster`: runs the installed `broadcaster` command ([project.scripts] in
pyproject.toml, which the web adapter provides because `serve` wires the server), looked up in
the package's metadata, so that this package never imports the adapter."""

import sys
from importlib.metadata import entry_points

commands = entry_points(group="console_scripts", name="broadcaster")
if not commands:
    sys.exit("error: the broadcaster command is not installed here; run scripts/serve, or pip install -e .")
sys.exit(next(iter(commands)).load()())
