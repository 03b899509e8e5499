"""`pvreal`: the real-device backend and the revision tools.

One module (or, for `rev`, one package) per command group in this package, each exposing
`register(subparsers)` and storing its handler as the parser default `func`; the library code
they call lives in pvreal/ under the same name (`ctl` and `env` say why theirs differ).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from shared.errors import run_command

DESCRIPTION = """\
pvtwin's real backend and revision tools.

  pvreal rev show STATE            what a revision holds: containers, groups, goals, signatures
  pvreal rev diff OLD NEW          what changed and whether Pantavisor would reboot
  pvreal rev sign / verify         pvs@2 JSON Web Signatures over state entries
  pvreal tx begin|add|remove|...   pvtx-style transactions on a state
  pvreal env list|get|set FILE     GRUB and U-Boot boot environment files
  pvreal device init|run           a real device daemon on a storage folder
  pvreal ctl ...                   talk to a running device over its control socket
  pvreal bench                     LOCAL_RUN latency and write amplification on a real device
  pvreal qemu build|run            a bootable QEMU image: real GRUB latch, pvtwin as PID 1
  pvreal hub serve|release|status  a real Hub: device API, rollouts, live dashboard
  pvreal fleet up|down|status|fault  N real devices in network namespaces, wired to a Hub
"""

GROUPS = (
    "pvreal.cli.rev",
    "pvreal.cli.tx",
    "pvreal.cli.env",
    "pvreal.cli.device",
    "pvreal.cli.ctl",
    "pvreal.cli.qemu",
    "pvreal.cli.bench",
    "pvreal.cli.hub",
    "pvreal.cli.crashcheck",
    "pvreal.cli.fleet",
)


def build_parser(
    prog: str = "pvreal", description: str = DESCRIPTION, groups: Sequence[str] = GROUPS
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    register_groups(parser.add_subparsers(dest="command", metavar="COMMAND", required=True), groups)
    return parser


def register_groups(subparsers: argparse._SubParsersAction, groups: Sequence[str]) -> None:
    """Let each command module add its commands; imported without a guard, so a missing module
    fails here rather than leaving its command silently out."""
    for name in groups:
        importlib.import_module(name).register(subparsers)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    # each CLI has its own entry point: pvsim and pvreal stay independent, shared/ stays I/O-free
    args = parser.parse_args(argv)
    return run_command(parser.prog, lambda: args.func(args), _stderr)


def _stderr(line: str | None) -> None:
    if line is None:  # stdout's reader left: close stderr too, so exit's flush says nothing
        sys.stderr.close()
    else:
        print(line, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
