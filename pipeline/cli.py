"""The `aisdiff` command line.

Subcommands come from the `aisdiff.commands` entry-point group, so that each package (this one and the
mmdet plugin) registers its own without the two importing each other. An entry point names a function
`add_parser(subparsers)` that adds one subparser and sets its `run(args) -> int` as the default `func`.
Errors caused by the user's input or its environment (`AisdiffError`: a bad file, a full disk) print as one
paragraph and exit with status 2; `--debug` (on any subcommand) shows their traceback instead.
"""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from priors.errors import AisdiffError

from .ranks import process_rank

ENTRY_POINT_GROUP = "aisdiff.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aisdiff",
        description="AISDiff: amodal instance segmentation with a Diffusion Shape Prior (offline prior cache "
                    "+ mmdet).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        ep.load()(subparsers)
    for subparser in subparsers.choices.values():
        subparser.add_argument("--debug", action="store_true",
                               help="show the traceback of an error instead of its one paragraph")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AisdiffError as exc:
        if args.debug:
            raise
        if process_rank() == 0:  # one of many processes: the main one speaks (the others' failures reach it)
            print(f"aisdiff {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"aisdiff {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
