"""Mounting a container's root filesystem the way Pantavisor does (pantavisor.md §1.3, §1.5).

    trails/<rev>/<name>/root.squashfs  --loop, ro-->  <run>/<name>/root
    trails/<rev>/_config/<name>/        (extra lower layer, above the squashfs, when present)
    upper+work dir: `storage.lxc-overlay` persistence
        permanent -> disks/perm/<name>/lxc-overlay     revision -> disks/rev/<rev>/<name>/lxc-overlay
        boot (default, and the fallback for an unknown value) -> a tmpfs at <run>/<name>/lxc-overlay
    overlay                              -------------->  <run>/<name>/rootfs

Every other `storage` entry is a volume (`docker--etc-foo` is `/etc/foo` in the container). Those
are bind mounts (permanent, revision) or tmpfs (boot) that runc makes inside the container's own
mount namespace, because runc resolves the destination inside the rootfs safely (a symlink in the
image cannot send a host-side bind mount outside it). `volume_mounts` plans them; `pvreal.runc`
writes them into config.json.

Mounts are made through `MountOps` so that unit tests can record them instead; `MountStack`
undoes a container's mounts in reverse order.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pvreal import squashfs, tools
from pvreal.storage import Storage, check_entry_path
from shared.errors import PvError
from shared.state import Persistence

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
CLONE_NEWNS = 0x00020000

OVERLAY_KEY = "lxc-overlay"
PERSISTENCES = tuple(p.value for p in Persistence)
DOCKER_VOLUME_PREFIX = "docker--"
DM_PREFIX = "dm:"
BUSY_WAIT_S = 0.5


class MountError(PvError):
    """A mount or unmount that failed; `source` is the mount point, `errno` the system's code."""

    errno: int | None = None


def persistence_of(spec: Any) -> str | None:
    """A storage entry's persistence, read as shared.state's parser reads it: an invalid value
    falls back to `boot`; an entry without one makes no volume (None)."""
    if not isinstance(spec, Mapping) or "persistence" not in spec:
        return None
    value = spec["persistence"]
    return value if value in PERSISTENCES else Persistence.BOOT.value


def volume_container_path(volume: str) -> str:
    """`docker--etc-foo` -> `/etc/foo` (Docker VOLUME entries, dashes standing for slashes)."""
    if volume.startswith(DOCKER_VOLUME_PREFIX):
        return "/" + volume[len(DOCKER_VOLUME_PREFIX) :].replace("-", "/")
    return "/" + volume


# --------------------------------------------------------------------------------------------
# System calls


class MountOps(Protocol):
    def mount(
        self, source: str, target: Path, fstype: str | None, flags: int, data: str
    ) -> None: ...
    def loop_mount(self, image: Path, target: Path, fstype: str) -> None: ...
    def umount(self, target: Path, *, lazy: bool = False) -> None: ...


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)


def _check(rc: int, what: str, target: Path | str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        exc = MountError(f"{what} failed: {os.strerror(err)}", source=str(target))
        exc.errno = err
        raise exc


class LinuxMountOps:
    """mount(2)/umount2(2) through libc; loop devices through util-linux `mount -o loop`
    (which sets autoclear, so the loop device goes away with the unmount)."""

    def mount(self, source: str, target: Path, fstype: str | None, flags: int, data: str) -> None:
        rc = _libc.mount(
            source.encode(),
            os.fsencode(target),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        )
        _check(rc, f"mount {fstype or 'bind'} {source}", target)

    def loop_mount(self, image: Path, target: Path, fstype: str) -> None:
        try:
            tools.run(["mount", "-t", fstype, "-o", "loop,ro", str(image), str(target)])
        except tools.ToolError as exc:
            raise MountError(exc.message, source=str(target)) from None

    def umount(self, target: Path, *, lazy: bool = False) -> None:
        rc = _libc.umount2(os.fsencode(target), MNT_DETACH if lazy else 0)
        _check(rc, "umount", target)


def enter_private_mount_namespace() -> None:
    """Give this process (this thread, if others exist) its own mount namespace with private
    propagation, so nothing the daemon mounts is seen by, or leaks back into, the host."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)", "/")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / rprivate", "/")


def mount_points(prefix: Path | str) -> list[str]:
    """Mount points at or below `prefix` in this process's namespace (for checks and cleanup)."""
    prefix = os.path.realpath(prefix)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ").replace("\\011", "\t")
            point = point.replace("\\012", "\n").replace("\\134", "\\")
            if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
                found.append(point)
    return found


# --------------------------------------------------------------------------------------------
# A stack of mounts, undone in reverse


@dataclass
class MountStack:
    ops: MountOps
    mounted: list[Path] = field(default_factory=list)

    def mount(
        self, source: str, target: Path, fstype: str | None, flags: int = 0, data: str = ""
    ) -> None:
        target.mkdir(parents=True, exist_ok=True)
        self.ops.mount(source, target, fstype, flags, data)
        self.mounted.append(target)

    def loop_mount(self, image: Path, target: Path, fstype: str = "squashfs") -> None:
        target.mkdir(parents=True, exist_ok=True)
        self.ops.loop_mount(image, target, fstype)
        self.mounted.append(target)

    def unmount_all(self, busy_wait: float = BUSY_WAIT_S) -> None:
        """Unmount newest first. A busy mount (the container's last processes are still dying
        after its init exited) is retried for up to `busy_wait` seconds, then detached lazily
        rather than left behind; a lazy detach keeps the loop device until they are gone."""
        errors = []
        while self.mounted:
            target = self.mounted.pop()
            deadline = time.monotonic() + busy_wait
            while True:
                try:
                    self.ops.umount(target)
                    break
                except MountError as exc:
                    if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                        time.sleep(0.01)
                        continue
                    try:
                        self.ops.umount(target, lazy=True)
                    except MountError:
                        errors.append(str(exc))
                    break
        if errors:
            raise MountError("; ".join(errors))


# --------------------------------------------------------------------------------------------
# A container's mounts


@dataclass(frozen=True, slots=True)
class VolumeMount:
    """One volume inside a container: a bind of `source`, or a tmpfs when `source` is None."""

    name: str
    destination: str
    source: Path | None


@dataclass
class MountedContainer:
    name: str
    rootfs: Path
    volumes: list[VolumeMount]
    stack: MountStack

    def unmount(self) -> None:
        self.stack.unmount_all()


def _overlay_path(path: Path) -> str:
    text = str(path)
    if any(c in text for c in ",:\\"):
        raise MountError("overlayfs paths must not contain ',', ':' or '\\'", source=text)
    return text


def _upper_dir(
    stack: MountStack, storage: Storage, rev: str, name: str, run_json: Mapping[str, Any], run: Path
) -> Path:
    spec = (run_json.get("storage") or {}).get(OVERLAY_KEY)
    persistence = persistence_of(spec) or Persistence.BOOT.value
    on_disk = storage.volume_dir(name, OVERLAY_KEY, persistence, rev)
    if on_disk is not None:
        return on_disk
    tmp = run / OVERLAY_KEY
    stack.mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    return tmp


def volume_mounts(
    storage: Storage, rev: str, name: str, run_json: Mapping[str, Any]
) -> list[VolumeMount]:
    """The container's volumes (every `storage` entry but the overlay), folders created."""
    volumes = []
    for volume, spec in sorted((run_json.get("storage") or {}).items()):
        if volume == OVERLAY_KEY:
            continue
        check_entry_path(volume)
        persistence = persistence_of(spec)
        if persistence is None:
            continue  # Pantavisor creates no volume without a persistence value
        source = storage.volume_dir(name, volume, persistence, rev)
        if source is not None:
            source.mkdir(parents=True, exist_ok=True)
        volumes.append(VolumeMount(volume, volume_container_path(volume), source))
    return volumes


def _root_image(storage: Storage, rev: str, name: str, run_json: Mapping[str, Any]) -> Path:
    trail = storage.trail_dir(rev) / name
    volume = run_json.get("root-volume")
    if not isinstance(volume, str) or not volume:
        raise MountError(
            "container has no root-volume", source=f"{name}/run.json", key="root-volume"
        )
    if volume.startswith(DM_PREFIX):
        volume = volume[len(DM_PREFIX) :]
        _verify_dm_volume(trail, volume)
    image = trail / check_entry_path(volume)
    if not image.is_file():
        raise MountError("root volume not checked out", source=str(image), key="root-volume")
    return image


def _verify_dm_volume(trail: Path, volume: str) -> None:
    """Without device-mapper on the host, check the whole image against its hash tree in
    userspace before the plain loop mount (the QEMU guest maps it with dm-verity instead)."""
    dm_file = trail / "_dm" / f"{volume}.json"
    try:
        dm = json.loads(dm_file.read_text())
    except (OSError, ValueError) as exc:
        raise MountError(f"dm-verity description unreadable: {exc}", source=str(dm_file)) from None
    data = trail / dm.get("data_device", volume)
    hashes = trail / dm.get("hash_device", f"{volume}.hash")
    if not squashfs.verity_verify(data, hashes, dm.get("root_hash", "")):
        raise MountError("dm-verity check failed", source=str(data), key="root_hash")


def mount_container(
    ops: MountOps,
    storage: Storage,
    rev: str,
    name: str,
    run_json: Mapping[str, Any],
    run_dir: Path,
) -> MountedContainer:
    """Mount `name` of revision `rev` under `run_dir/<name>/`; on failure undo what was done."""
    run = Path(run_dir) / check_entry_path(name)
    stack = MountStack(ops)
    try:
        image = _root_image(storage, rev, name, run_json)
        lower = run / "root"
        stack.loop_mount(image, lower)
        lowers = [lower]
        config_dir = storage.trail_dir(rev) / "_config" / name
        if config_dir.is_dir():
            lowers.insert(0, config_dir)  # leftmost lower is the top one
        upper_base = _upper_dir(stack, storage, rev, name, run_json, run)
        upper, work = upper_base / "upper", upper_base / "work"
        upper.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        rootfs = run / "rootfs"
        data = "lowerdir={},upperdir={},workdir={}".format(
            ":".join(_overlay_path(p) for p in lowers), _overlay_path(upper), _overlay_path(work)
        )
        stack.mount("overlay", rootfs, "overlay", 0, data)
        return MountedContainer(name, rootfs, volume_mounts(storage, rev, name, run_json), stack)
    except BaseException:
        with contextlib.suppress(MountError):
            stack.unmount_all()
        raise
