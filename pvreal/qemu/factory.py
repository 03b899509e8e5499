"""The device's storage disk: a factory revision 0 made with the revision tools, for the real daemon.

Revision 0 is built exactly as `pvreal rev add-bsp` and `pvreal rev add-container` build one
(the same functions: `build_bsp`, `build_container`), with the image's Debian kernel and pvtwin
initramfs as the BSP and a busybox container `app`, then installed with `pvreal device init`'s
`install_factory` (GRUB env, faithful: grubenv written in place) into a staged tree that becomes
the ext4 partition. Updates for tests and `pvreal qemu run --update` are made the same way
(`Revisions`), sharing one objects folder so unchanged parts are not re-uploaded.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvreal.device.guest import DEVICE_CONFIG
from pvreal.device.install import install_factory
from pvreal.objectstore import ObjectStore
from pvreal.qemu import disk
from pvreal.qemu.cmdline import write_cmdline_env
from pvreal.rev.build import build_bsp, build_container, replace_part, save_state
from pvreal.rootfs import busybox_rootfs
from shared import canonical

# A container that runs until stopped (and stops at once on SIGTERM: reboots stay quick).
SERVICE_INIT = "#!/bin/sh\ntrap 'exit 0' TERM\necho app up\nwhile :; do sleep 1; done\n"
# A container whose init fails straight away (the "bad app update").
CRASHING_INIT = "#!/bin/sh\necho app crashing\nexit 3\n"
# Short engine timers for a QEMU device (Pantavisor keys, shared.engine.config).
DEFAULT_CONFIG = {"PV_UPDATER_COMMIT_DELAY": "3", "PV_UPDATER_GOALS_TIMEOUT": "60"}


@dataclass
class Revisions:
    """Builds revision states in `work/` (objects in `work/objects`) with the revision tools."""

    work: Path
    kernel: Path
    initrd: Path

    @property
    def objects(self) -> ObjectStore:
        return ObjectStore(self.work / "objects")

    def bsp(self, state: dict[str, Any], cmdline: str | None = None) -> dict[str, Any]:
        entries = build_bsp(
            kernel=self.kernel, initrd=self.initrd, objects=self.objects, cmdline=cmdline
        )
        return replace_part(state, "bsp/", entries)

    def container(
        self,
        state: dict[str, Any],
        name: str = "app",
        init_script: str = SERVICE_INIT,
        *,
        verity: bool = False,
        restart_policy: str | None = "container",
    ) -> dict[str, Any]:
        rootfs = busybox_rootfs(self.work / f"rootfs-{name}", init_script)
        entries = build_container(
            name,
            rootfs=rootfs,
            oci_image=None,
            objects=self.objects,
            restart_policy=restart_policy,
            verity=verity,
        )
        return replace_part(state, f"{name}/", entries)

    def factory(self, cmdline: str | None = None) -> dict[str, Any]:
        # restart policy "container": updating it alone needs no reboot (a "system" one would)
        return self.container(
            self.bsp({"#spec": "pantavisor-service-system@1"}, cmdline),
            restart_policy="container",
        )

    def save(self, name: str, state: Mapping[str, Any]) -> Path:
        path = self.work / f"{name}.json"
        save_state(path, dict(state))
        return path


def stage_device_tree(
    tree: Path, revisions: Revisions, state: Mapping[str, Any], config: Mapping[str, str]
) -> None:
    """Install `state` as factory revision 0 in `tree` (the storage partition's content)."""
    if tree.exists():
        shutil.rmtree(tree)
    state_path = revisions.save("rev0", state)
    install_factory(tree, state_path, revisions.objects.dir, "grub", "faithful")
    write_cmdline_env(tree / "trails" / "0" / ".pv", state)
    (tree / DEVICE_CONFIG).write_text(json.dumps({"config": dict(config)}, indent=1) + "\n")


def make_device_disk(
    path: Path,
    kernel: Path,
    initrd: Path,
    *,
    config: Mapping[str, str] | None = None,
    size_mb: int = disk.DEFAULT_SIZE_MB,
) -> Path:
    """The storage disk of a fresh device: factory revision 0 (bsp + busybox `app`)."""
    work = path.with_name(path.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    revisions = Revisions(work, kernel, initrd)
    tree = work / "tree"
    stage_device_tree(tree, revisions, revisions.factory(), config or DEFAULT_CONFIG)
    try:
        disk.make_image(path, tree, size_mb)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def state_bytes(state: Mapping[str, Any]) -> bytes:
    return canonical.dump_bytes(dict(state))
