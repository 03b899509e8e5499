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

GRUB (pvreal's QEMU guest, the script in pvreal/qemu/grub.py) implements the single-shot table
above with the same variable names, in GRUB script; tests/test_bootenv_latch.py runs that script
and checks it against `choose_boot`. Its latch lives in Pantavisor's own grubenv, so a write of
`pv_try` also decides the latch: `latch_after_try_write`.

Everything a backend does with the stored variables is here (which names, how a latch is encoded,
what a SetBootEnv does to the env, what the latch becomes); a backend only loads and saves them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shared.engine.config import BootLatch

# Pantavisor writes these two (SetBootEnv); the bootloader only reads them.
PV_REV, PV_TRY = "pv_rev", "pv_try"
# The bootloader writes its latch itself, before it boots.
PV_TRYING, PV_TRYING_ATTEMPTS = "pv_trying", "pv_trying_attempts"
DEFAULT_REV = "0"  # booted when pv_rev is unset (the factory revision)


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


def latch_from_env(values: Mapping[str, str]) -> Latch:
    """The latch stored in a bootloader env (a missing or unreadable count is 0)."""
    try:
        attempts = int(values.get(PV_TRYING_ATTEMPTS, "0") or 0)
    except ValueError:
        attempts = 0
    return Latch(values.get(PV_TRYING, ""), attempts)


def latch_to_env(values: Mapping[str, str], latch: Latch) -> dict[str, str]:
    """`values` with the latch written into it: an empty latch variable is removed, not stored."""
    out = dict(values)
    for key, value in ((PV_TRYING, latch.pv_trying), (PV_TRYING_ATTEMPTS, str(latch.attempts))):
        if value and value != "0":
            out[key] = value
        else:
            out.pop(key, None)
    return out


def boot_from_env(
    env: Mapping[str, str],
    latch_env: Mapping[str, str],
    variant: BootLatch = BootLatch.SINGLE_SHOT,
    attempts: int = 3,
) -> tuple[BootChoice, dict[str, str]]:
    """One run of the bootloader on stored variables: the choice, and the latch env to store
    (before booting) when it differs from `latch_env`."""
    choice = choose_boot(
        env.get(PV_REV, DEFAULT_REV) or DEFAULT_REV,
        env.get(PV_TRY, ""),
        latch_from_env(latch_env),
        variant,
        attempts,
    )
    return choice, latch_to_env(latch_env, choice.latch)


def env_after_set(
    env: Mapping[str, str], pv_rev: str | None, pv_try: str | None
) -> dict[str, str]:
    """The env after the engine's SetBootEnv: None leaves a variable, "" removes it."""
    out = dict(env)
    for key, value in ((PV_REV, pv_rev), (PV_TRY, pv_try)):
        if value is None:
            continue
        if value:
            out[key] = value
        else:
            out.pop(key, None)
    return out


def latch_after_try_write(latch: Latch, old_try: str, new_try: str) -> Latch:
    """The latch after Pantavisor changed pv_try, for a bootloader whose latch shares
    Pantavisor's env (GRUB's grubenv): a new try, a commit or a rollback that clears pv_try
    drops it. A stale pv_trying equal to a later pv_try would roll that try back on its first
    boot (grub-qemu.md §5)."""
    if new_try != old_try or not new_try:
        return Latch()
    return latch
