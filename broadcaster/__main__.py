"""`python -m broadcaster`: the same command as the installed `broadcaster`. This launcher is the one
module here that reaches for the web adapter (web/cli.py wires the server); nothing imports it."""

import sys

from web.cli import main

sys.exit(main())
