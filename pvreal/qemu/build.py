"""The cached, incremental build of everything a QEMU boot needs.

`build(out)` produces, in `out/`:
  pv-kernel.img   the Debian kernel (vmlinuz)           from the kernel package cache
  pv-initrd.img   the Python initramfs (lz4 by default)  rebuilt when any input file changes
  grub.lnx        GRUB with the latch, for -kernel       rebuilt when the script or GRUB changes
  storage.img     the storage disk (grubenv + trails)    rebuilt when kernel/initrd/layout change
                  (boots the boot chain test harness)
  device.img      the real device's disk: factory revision 0 (bsp + busybox container) built
                  with the revision tools, booted by pvreal.device.guest_main
  build.json      what each artifact's inputs were (its key) and where it came from this time

The storage disk is the device's state: a build whose inputs did not change keeps it as it is
(boots in between have changed its grubenv on purpose); `fresh_disk=True` starts it over.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pvreal.qemu import disk, factory, grub, initramfs
from pvreal.qemu import kernel as kernel_mod

MANIFEST = "build.json"
REPO = Path(__file__).resolve().parents[2]


def default_cache() -> Path:
    """$PVTWIN_CACHE/qemu, else ~/.cache/pvtwin/qemu (shared by builds and test runs)."""
    base = os.environ.get("PVTWIN_CACHE")
    return Path(base) / "qemu" if base else Path.home() / ".cache" / "pvtwin" / "qemu"


@dataclass
class Artifact:
    name: str
    path: str
    size: int
    source: str  # "cache hit", "downloaded", "built"
    seconds: float
    key: str


@dataclass
class Image:
    """A built set of artifacts (see the module docstring)."""

    out: Path
    kernel_version: str
    artifacts: dict[str, Artifact] = field(default_factory=dict)

    @property
    def kernel(self) -> Path:
        return self.out / "pv-kernel.img"

    @property
    def initrd(self) -> Path:
        return self.out / "pv-initrd.img"

    @property
    def grub_lnx(self) -> Path:
        return self.out / "grub.lnx"

    @property
    def disk(self) -> Path:
        return self.out / "storage.img"

    @property
    def device_disk(self) -> Path:
        """The real device's disk: factory revision 0 made by the revision tools (factory.py)."""
        return self.out / "device.img"

    @classmethod
    def load(cls, out: Path) -> Image:
        """An image built earlier into `out` (reads build.json)."""
        manifest = json.loads((out / MANIFEST).read_text())
        artifacts = {a["name"]: Artifact(**a) for a in manifest["artifacts"]}
        return cls(out, manifest["kernel_version"], artifacts)


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One build at a time per cache (parallel test workers share it)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def build(
    out: Path,
    *,
    cache: Path | None = None,
    revisions: tuple[str, ...] = ("0",),
    env: Mapping[str, str] | None = None,
    on_save_env_failure: str = "boot-committed",
    disk_size_mb: int = disk.DEFAULT_SIZE_MB,
    fresh_disk: bool = False,
    repo: Path = REPO,
    device_disk: bool = True,
    kernel_flavour: str = kernel_mod.DEFAULT_FLAVOUR,
    compression: str = initramfs.DEFAULT_COMPRESSION,
    boot_checksum: bool = False,
) -> Image:
    """Build (or reuse) every artifact in `out`; each Artifact says where it came from.

    `repo` is the folder holding `shared/` and `pvreal/` to put in the guest (this checkout);
    `kernel_flavour` is "cloud" (fast) or "generic" (has the i6300esb driver), pvreal.qemu.kernel.
    `boot_checksum`: GRUB leaves `pv_quickboot` off the kernel command line, so every boot re-hashes
    the booted revision's objects (Pantavisor's boot-time checksum pass); see grub.QUICKBOOT.
    """
    cache = cache or default_cache()
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_keys(out)
    env = dict(env or {"pv_rev": revisions[0]})
    with _locked(cache):
        started = time.monotonic()
        kern = kernel_mod.fetch(cache, flavour=kernel_flavour)
        image = Image(out, kern.version)
        kernel_key = _key("kernel", kern.package)
        source = "downloaded" if kern.source == "downloaded" else "cache hit"
        if previous.get("kernel") != kernel_key or not image.kernel.exists():
            _copy(kern.vmlinuz, image.kernel)
        image.artifacts["kernel"] = _artifact("kernel", image.kernel, source, started, kernel_key)

        started = time.monotonic()
        plan = initramfs.plan(kern, repo, cache)
        initrd_key = _key("initrd", kern.package, plan.fingerprint(), compression)
        source = "cache hit"
        if previous.get("initrd") != initrd_key or not image.initrd.exists():
            initramfs.write(plan, image.initrd, compression)
            source = "built"
        image.artifacts["initrd"] = _artifact("initrd", image.initrd, source, started, initrd_key)

        started = time.monotonic()
        script = grub.boot_script(
            on_save_env_failure=on_save_env_failure, quickboot=not boot_checksum
        )
        grub_key = _key("grub", grub.fingerprint(script))
        source = "cache hit"
        if previous.get("grub") != grub_key or not image.grub_lnx.exists():
            grub.build(image.grub_lnx, script)
            source = "built"
        image.artifacts["grub"] = _artifact("grub", image.grub_lnx, source, started, grub_key)

        started = time.monotonic()
        disk_key = _key("disk", kernel_key, initrd_key, revisions, env, disk_size_mb)
        source = "cache hit"
        if fresh_disk or previous.get("disk") != disk_key or not image.disk.exists():
            make_storage_disk(image, image.disk, revisions=revisions, env=env, size_mb=disk_size_mb)
            source = "built"
        image.artifacts["disk"] = _artifact("disk", image.disk, source, started, disk_key)

        if device_disk:
            started = time.monotonic()
            device_key = _key("device-disk", kernel_key, initrd_key, disk_size_mb, 1)
            source = "cache hit"
            if fresh_disk or previous.get("device-disk") != device_key or not image.device_disk.exists():
                factory.make_device_disk(
                    image.device_disk, image.kernel, image.initrd, size_mb=disk_size_mb
                )
                source = "built"
            image.artifacts["device-disk"] = _artifact(
                "device-disk", image.device_disk, source, started, device_key
            )
    manifest = {
        "kernel_version": image.kernel_version,
        "artifacts": [asdict(a) for a in image.artifacts.values()],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return image


def make_storage_disk(
    image: Image,
    path: Path,
    *,
    revisions: tuple[str, ...] = ("0",),
    env: Mapping[str, str] | None = None,
    harness: Mapping[str, Mapping[str, str]] | None = None,
    size_mb: int = disk.DEFAULT_SIZE_MB,
) -> Path:
    """A storage disk whose trails/<rev>/.pv/ hold this image's kernel and initrd.

    `harness` {rev: {"try": actions, "boot": actions}} writes trails/<rev>/.pv/harness.json,
    which makes the guest run the boot chain test harness for that revision (see guest_init).
    """
    extra = {
        f"trails/{rev}/.pv/harness.json": json.dumps(dict(spec)).encode()
        for rev, spec in (harness or {}).items()
    }
    tree = path.with_name(path.name + ".tree")
    disk.stage_tree(
        tree,
        {rev: (image.kernel, image.initrd) for rev in revisions},
        env if env is not None else {"pv_rev": revisions[0]},
        extra,
    )
    try:
        disk.make_image(path, tree, size_mb)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return path


def _previous_keys(out: Path) -> dict[str, str]:
    try:
        return {name: a.key for name, a in Image.load(out).artifacts.items()}
    except (FileNotFoundError, KeyError, TypeError, json.JSONDecodeError):
        return {}


def _copy(source: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)


def _artifact(name: str, path: Path, source: str, started: float, key: str) -> Artifact:
    return Artifact(
        name, str(path), path.stat().st_size, source, round(time.monotonic() - started, 2), key
    )
