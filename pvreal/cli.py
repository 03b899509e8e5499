"""`pvreal`: the real-device backend and the revision tools."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from shared.cli_support import build_parser, run

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
"""

# Command groups, each a module with register(subparsers); see shared.cli_support.
GROUPS = (
    "pvreal.cli_rev",
    "pvreal.cli_tx",
    "pvreal.cli_env",
    "pvreal.cli_device",
    "pvreal.cli_ctl",
    "pvreal.cli_qemu",
    "pvreal.cli_bench",
)


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser("pvreal", DESCRIPTION, GROUPS), argv)


if __name__ == "__main__":
    sys.exit(main())
