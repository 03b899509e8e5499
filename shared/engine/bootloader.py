"""The bootloader's choice between `pv_try` and `pv_rev` (pantavisor.md §3.7), as pure functions.

Pantavisor writes `pv_rev` and `pv_try`; the bootloader owns a latch it writes itself before it
boots (`pv_trying` in U-Boot's `pv.env`). A backend that simulates the boot (pvsim, pvreal outside
QEMU) calls `choose_boot` with the env it read and stores the returned latch before booting.

Single-shot (U-Boot boot.cmd.pvgeneric, the default):

| pv_try | pv_trying        | boots   | latch written         |
|--------|------------------|---------|-----------------------|
| unset  | any              | pv_rev  | unchanged             |
| R      | != R             | R (try) | pv_trying = R         |
| R      | == R             | pv_rev  | pv_trying cleared     |

Counter (RAUC / GRUB boot-attempt style, `PVTWIN_BOOT_LATCH=counter`): the latch also counts
attempts; R is tried up to `attempts` times before falling back. With attempts = 1 this is exactly
the single-shot table.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.engine.config import BootLatch


@dataclass(frozen=True, slots=True)
class Latch:
    """The bootloader-owned part of the env."""

    pv_trying: str = ""
    attempts: int = 0  # counter variant: boots of pv_trying so far


@dataclass(frozen=True, slots=True)
class BootChoice:
    rev: str  # what is booted; becomes the kernel cmdline pv_rev
    latch: Latch  # to be persisted by the bootloader before booting
    trying: bool  # the boot is an attempt of pv_try


def choose_boot(
    pv_rev: str,
    pv_try: str,
    latch: Latch,
    variant: BootLatch = BootLatch.SINGLE_SHOT,
    attempts: int = 3,
) -> BootChoice:
    """Which revision the bootloader boots, and the latch it writes first."""
    limit = 1 if variant is BootLatch.SINGLE_SHOT else max(1, attempts)
    if not pv_try:
        return BootChoice(pv_rev, latch, False)
    if latch.pv_trying != pv_try:
        return BootChoice(pv_try, Latch(pv_try, 1), True)
    if variant is BootLatch.COUNTER and latch.attempts < limit:
        return BootChoice(pv_try, Latch(pv_try, latch.attempts + 1), True)
    return BootChoice(pv_rev, Latch(), False)
