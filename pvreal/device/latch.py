"""The boot env and the try-boot latch, on disk, for a daemon that is not PID 1.

Outside QEMU no bootloader runs, so the daemon plays its part at every (re)boot: it reads
`pv_rev` / `pv_try` from the Pantavisor env, reads its own latch (`pv_trying`, and the attempt
count of the counter variant) from a separate bootloader-owned env, asks
`shared.engine.bootloader.boot_from_env` which revision to boot and what the latch becomes, and
writes that back durably *before* booting, as U-Boot's boot.cmd does with `pv.env`
(pantavisor.md §3.7). Variable names, encoding and decisions are all in shared; this module only
loads and saves.

Files under `<storage>/boot/` (formats from pvreal.bootenv):

    bootloader  ordering   Pantavisor env                 latch
    uboot       faithful   uboot.txt (in place)           pv.env (uboot.txt layout)
    uboot       hardened   uboot.env + uboot-redund.env   pv.env + pv-redund.env (redundant images)
    grub        faithful   grubenv (in place)             pv.grubenv
    grub        hardened   grubenv + grubenv-redund       pv.grubenv + pv-redund.grubenv
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pvreal.bootenv import EnvStore, grub, open_store, uboot, uboot_txt
from shared.engine.bootloader import BootChoice, boot_from_env, env_after_set
from shared.engine.config import BootLatch, Config

BOOTLOADERS = ("uboot", "grub")


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


def apply_latch(files: BootFiles, config: Config) -> tuple[BootChoice, dict[str, str]]:
    """One boot's bootloader step: `shared.engine.bootloader` decides, this only loads the two
    envs and stores the latch it returns (before booting).

    Returns the choice (its `rev` is the kernel cmdline pv_rev) and the Pantavisor env read."""
    env = files.env.load()
    before = files.latch.load()
    choice, after = boot_from_env(env, before, BootLatch(config.boot_latch), config.boot_attempts)
    if after != before:
        files.latch.save(after)
    return choice, env


def set_env(files: BootFiles, pv_rev: str | None, pv_try: str | None) -> None:
    """The engine's SetBootEnv on the device's boot env files."""
    files.env.save(env_after_set(files.env.load(), pv_rev, pv_try))
