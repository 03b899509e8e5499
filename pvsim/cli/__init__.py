"""`pvsim`: fleet-scale failure scenarios, update-strategy benchmarks and crash-point checks.

One module per command group in this package, each exposing `register(subparsers)` and storing
its handler as the parser default `func`; the library code they call lives in pvsim/ under the
same name (`run` says why its differs).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from shared.errors import run_command

DESCRIPTION = """\
pvtwin's discrete-event simulator.

  pvsim crashcheck                 cut power at every durable step of an update; check invariants
                                   (both orderings: faithful's windows named, hardened's none)
  pvsim trace CASE                 one scripted device: every record, env write and reboot
  pvsim run SCENARIO               simulate a fleet rollout; write results, plots and a report
                                   (--shards N [--dask ADDR]: one giant fleet in parallel shards)
  pvsim shard-check SCENARIO       how far a sharded run is from the unsharded one
  pvsim compare SCENARIO           strategies or update models side by side over many seeds
  pvsim sweep SCENARIO --grid ...  factorial parameter sweeps (process pool or Dask)
  pvsim bench                      the twin against the plain-SimPy reference model: wall ratio,
                                   µs per device-update, memory (pvsim/reference)
  pvsim validate SCENARIO          the scenario on a real fleet (root) and in pvsim, compared
  pvsim calibrate TIMELINE         device figures fitted from a real fleet's timeline
"""

GROUPS = (
    "pvsim.cli.crashcheck",
    "pvsim.cli.trace",
    "pvsim.cli.run",
    "pvsim.cli.shard_check",
    "pvsim.cli.compare",
    "pvsim.cli.sweep",
    "pvsim.cli.bench",
    "pvsim.cli.validate",
    "pvsim.cli.calibrate",
)


def build_parser(groups: Sequence[str] = GROUPS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvsim", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in groups:  # imported without a guard: a missing module fails, it never hides a command
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # each CLI has its own entry point: pvsim and pvreal stay independent, shared/ stays I/O-free
    args = build_parser().parse_args(argv)
    return run_command("pvsim", lambda: args.func(args), _stderr)


def _stderr(line: str | None) -> None:
    if line is None:  # stdout's reader left: close stderr too, so exit's flush says nothing
        sys.stderr.close()
    else:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
