"""`pvsim`: fleet-scale failure scenarios, update-strategy benchmarks and crash-point checks."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from shared.cli_support import build_parser, run

DESCRIPTION = """\
pvtwin's discrete-event simulator.

  pvsim crashcheck                 cut power at every durable step of an update; check invariants
  pvsim run SCENARIO               simulate a fleet rollout; write results, plots and a report
                                   (--shards N [--dask ADDR]: one giant fleet in parallel shards)
  pvsim shard-check SCENARIO       how far a sharded run is from the unsharded one
  pvsim compare SCENARIO           strategies or update models side by side over many seeds
  pvsim sweep SCENARIO --grid ...  factorial parameter sweeps (process pool or Dask)
  pvsim bench                      event rate, events per device-update, memory per device
"""

GROUPS = (
    "pvsim.cli_crashcheck",
    "pvsim.cli_run",
    "pvsim.cli_compare",
    "pvsim.cli_sweep",
    "pvsim.cli_bench",
)


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser("pvsim", DESCRIPTION, GROUPS), argv)


if __name__ == "__main__":
    sys.exit(main())
