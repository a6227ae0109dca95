"""``flowdiff`` command line. Thin: each subcommand lives in ``flowdiff/commands/<name>.py``
with ``register(subparsers)`` (argument definitions only, cheap to import) and a ``run(args)``
that imports the heavy machinery it needs."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from flowdiff import __version__

# Order here is the order in --help. Each entry is a module under flowdiff.commands.
COMMANDS = ("ingest", "codec", "train", "calibrate", "generate", "serve", "config", "eval", "baseline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowdiff",
        description="Learn real network traffic, then stream realistic synthetic flows "
                    "without end (Diffusion-TS around NetShare's pre/post-processing).",
    )
    parser.add_argument("--version", action="version", version=f"flowdiff {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"flowdiff.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command (in process: tests and scripts call this) and return its exit code."""
    return _run(build_parser().parse_args(argv))


def entry() -> None:
    """The ``flowdiff`` program (console script, ``python -m flowdiff``): ``main``, then exit.
    A stopped daemon leaves at once: its exporters are closed, its state saved and its
    stop logged by then, and the interpreter's teardown (torch and the token tables, in C)
    took 1-2 s more on a loaded machine, past the shutdown bound a supervisor waits for."""
    args = build_parser().parse_args()
    code = _run(args)
    if args.command == "serve":
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # the reader went away (serve | head), or closed
                pass
        os._exit(code)
    sys.exit(code)


def _run(args: argparse.Namespace) -> int:
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    entry()
