"""What both command lines share: subcommand discovery and the exit-code rule.

Exit codes: 0 ok, 1 invalid input or a failed check, 2 usage error (argparse's own).
Each command group lives in its own module exposing `register(subparsers)`; a group's handler is
stored as the parser default `func` and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from shared.errors import PvError

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def build_parser(prog: str, description: str, groups: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_groups(subparsers, groups)
    return parser


def register_groups(subparsers: argparse._SubParsersAction, groups: Sequence[str]) -> None:
    """Let each command module add its subcommands; modules not written yet are left out."""
    for module_name in groups:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # a real missing dependency, not an unbuilt group
                raise
            continue
        module.register(subparsers)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PvError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        sys.stderr.close()
        return EXIT_OK
