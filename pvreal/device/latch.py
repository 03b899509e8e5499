"""The boot env and the try-boot latch, on disk, for a daemon that is not PID 1.

Outside QEMU no bootloader runs, so the daemon plays its part at every (re)boot: it reads
`pv_rev` / `pv_try` from the Pantavisor env, reads its own latch (`pv_trying`, and the attempt
count of the counter variant) from a separate bootloader-owned env, asks
`shared.engine.bootloader.choose_boot` which revision to boot, and writes the latch back durably
*before* booting, as U-Boot's boot.cmd does with `pv.env` (pantavisor.md §3.7).

Files under `<storage>/boot/` (formats from pvreal.bootenv):

    bootloader  ordering   Pantavisor env                 latch
    uboot       faithful   uboot.txt (in place)           pv.env (uboot.txt layout)
    uboot       hardened   uboot.env + uboot-redund.env   pv.env + pv-redund.env (redundant images)
    grub        faithful   grubenv (in place)             pv.grubenv
    grub        hardened   grubenv + grubenv-redund       pv.grubenv + pv-redund.grubenv
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pvreal.bootenv import EnvStore, grub, open_store, uboot, uboot_txt
from shared.engine.bootloader import BootChoice, Latch, choose_boot
from shared.engine.config import BootLatch, Config

BOOTLOADERS = ("uboot", "grub")
LATCH_KEY, ATTEMPTS_KEY = "pv_trying", "pv_trying_attempts"


@dataclass(frozen=True, slots=True)
class BootFiles:
    env: EnvStore  # pv_rev, pv_try: written by Pantavisor (the engine's SetBootEnv)
    latch: EnvStore  # pv_trying: written by the bootloader only


def boot_files(boot_dir: Path, bootloader: str, ordering: str) -> BootFiles:
    """The two env stores of a device for a bootloader type and a write ordering."""
    if bootloader not in BOOTLOADERS:
        raise ValueError(f"unknown bootloader {bootloader!r}; expected one of {BOOTLOADERS}")
    if bootloader == "grub":
        return BootFiles(
            open_store(boot_dir / "grubenv", grub(), ordering),
            open_store(boot_dir / "pv.grubenv", grub(), ordering),
        )
    if ordering == "faithful":
        return BootFiles(
            open_store(boot_dir / "uboot.txt", uboot_txt(), ordering),
            open_store(boot_dir / "pv.env", uboot_txt(), ordering),
        )
    return BootFiles(
        open_store(boot_dir / "uboot.env", uboot(), ordering),
        open_store(boot_dir / "pv.env", uboot(), ordering),
    )


def read_latch(values: Mapping[str, str]) -> Latch:
    try:
        attempts = int(values.get(ATTEMPTS_KEY, "0") or 0)
    except ValueError:
        attempts = 0
    return Latch(values.get(LATCH_KEY, ""), attempts)


def apply_latch(files: BootFiles, config: Config) -> tuple[BootChoice, dict[str, str]]:
    """One boot's bootloader step: choose the revision and persist the latch first.

    Returns the choice (its `rev` is the kernel cmdline pv_rev) and the Pantavisor env read."""
    env = files.env.load()
    before = files.latch.load()
    latch = read_latch(before)
    choice = choose_boot(
        env.get("pv_rev", "0") or "0",
        env.get("pv_try", ""),
        latch,
        BootLatch(config.boot_latch),
        config.boot_attempts,
    )
    after = dict(before)
    for key, value in ((LATCH_KEY, choice.latch.pv_trying), (ATTEMPTS_KEY, str(choice.latch.attempts))):
        if value and value != "0":
            after[key] = value
        else:
            after.pop(key, None)
    if after != before:
        files.latch.save(after)
    return choice, env


def apply_set_env(env: dict[str, str], pv_rev: str | None, pv_try: str | None) -> None:
    """The engine's SetBootEnv on a loaded env: None leaves a key, "" unsets it."""
    for key, value in (("pv_rev", pv_rev), ("pv_try", pv_try)):
        if value is None:
            continue
        if value:
            env[key] = value
        else:
            env.pop(key, None)


def set_env(files: BootFiles, pv_rev: str | None, pv_try: str | None) -> None:
    """The engine's SetBootEnv on the device's boot env files."""
    env = files.env.load()
    apply_set_env(env, pv_rev, pv_try)
    files.env.save(env)
