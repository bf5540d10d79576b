"""``forkjoin dashboard -- COMMAND ...``: run any forkjoin command with the live page up.

Registered by ``cli.py`` like the other layers' commands; imports only argparse at the top.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from typing import Any

_EPILOG = """\
examples:
  forkjoin dashboard -- map mymodule:fn items.jsonl -o out.jsonl --workers 4
  forkjoin dashboard --keep -- process ...      (keep serving after the command; Ctrl-C stops)

The URL (127.0.0.1 only, with a random token) is printed on stderr before the command starts.
Exit status: the command's own.
"""


def register(commands: Any) -> dict[str, Callable[[argparse.Namespace, Any], int]]:
    parser = commands.add_parser(
        "dashboard", help="run a forkjoin command with a live dashboard (127.0.0.1, token)",
        description="Serve a live page of the workers, throughput, ETA, task timeline and "
        "failures while another forkjoin command runs in this process.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument(
        "--keep", action="store_true", help="keep serving after the command ends (Ctrl-C stops)"
    )
    parser.add_argument("cli", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    return {"dashboard": cmd_dashboard}


def cmd_dashboard(args: argparse.Namespace, streams: Any) -> int:
    from ..cli import EXIT_INTERRUPTED, EXIT_USAGE, main
    from .dashboard import dashboard

    command = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    if not command or command[0] == "dashboard":
        streams.error("dashboard", "give the command to run after --, e.g. -- map mod:fn in.jsonl")
        return EXIT_USAGE
    board = dashboard(port=args.port, quiet=True)
    try:
        streams.note("dashboard", board.url)
        code = main(command, stdout=streams.stdout, stderr=streams.stderr, stdin=streams.stdin)
        if args.keep:
            streams.note("dashboard", "the command ended; still serving (Ctrl-C stops)")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                return EXIT_INTERRUPTED
        return code
    finally:
        board.close()
