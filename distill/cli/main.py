"""The `wavedistill` command. Subcommands come from the `wavedistill.commands` entry points, so
later packages add theirs without `distill` importing them."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

from distill.cli.allocator import tune_allocator
from distill.errors import WavedistillError


class _Handler(logging.StreamHandler):
    """wavedistill's stderr handler: `configure_logging` adds it once (marked by `_wavedistill`)."""

    _wavedistill = True


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return msg if record.levelno == logging.INFO else f"{record.levelname.lower()}: {msg}"


def configure_logging(verbose: bool = False) -> None:
    logger = logging.getLogger("wavedistill")
    if not any(getattr(h, "_wavedistill", False) for h in logger.handlers):
        handler = _Handler(sys.stderr)
        handler.setFormatter(_OneLine())
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wavedistill",
        description="Distil autoregressive WaveNet teachers into parallel students; evaluate with PESQ and RTF.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    found = sorted(entry_points(group="wavedistill.commands"), key=lambda ep: ep.name)
    if not found:  # a source tree that was never installed: only the base package's commands
        from distill.cli import commands

        for add in (commands.add_data, commands.add_env, commands.add_make_demo_corpus):
            add(sub)
    for ep in found:
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    tune_allocator()
    try:
        return int(args.func(args) or 0)
    except WavedistillError as err:
        print(f"wavedistill {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wavedistill {args.command}: interrupted", file=sys.stderr)
        return 130

