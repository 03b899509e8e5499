"""A Debian kernel for the guest: `apt-get download` into a cache, then `dpkg-deb -x`.

Two flavours (docs/qemu.md, "Boot time"):
- `cloud` (`linux-image-cloud-amd64`, the default): an LZ4-compressed bzImage, decompressed in
  ~0.1 s under TCG, against ~2.6 s for the generic kernel's XZ (measured with the same vmlinux
  booted as an ELF). It has no i6300esb driver, so the guest's watchdog is `softdog` (a kernel
  timer that resets the machine when /dev/watchdog is not petted: it catches a hung PID 1, not a
  hung kernel).
- `generic` (`linux-image-amd64`): the i6300esb driver for QEMU's `-device i6300esb` (platform
  notes §4, grub-qemu §5), at ~3 s more per boot.
"""

from __future__ import annotations

import lzma
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pvreal import tools
from pvreal.tools import ToolError

FLAVOURS = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}
DEFAULT_FLAVOUR = "cloud"
META_PACKAGE = FLAVOURS["generic"]


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel: the image, the module tree and the version string (`uname -r`)."""

    package: str
    version: str  # e.g. 6.1.0-56-amd64
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<version>
    source: str  # "cache hit" or "downloaded"


def resolve_package(meta: str = META_PACKAGE) -> str:
    """The concrete package the meta package depends on, e.g. linux-image-6.1.0-56-amd64."""
    out = tools.run(["apt-cache", "depends", meta])
    match = re.search(r"Depends:\s*(linux-image-\S+)", out)
    if not match:
        raise ToolError(
            f"apt-cache depends {meta}: no linux-image dependency in {out!r}", source=meta
        )
    return match.group(1)


def fetch(cache: Path, package: str | None = None, flavour: str = DEFAULT_FLAVOUR) -> Kernel:
    """Download (once) and unpack (once) the kernel package of `flavour` into `cache`.

    The package the meta package pointed to is remembered in the cache, so later builds neither
    ask apt nor change kernels under the tests' feet; delete the cache to move to a newer one.
    """
    if flavour not in FLAVOURS:
        raise ToolError(f"kernel flavour must be one of {sorted(FLAVOURS)}", source=flavour)
    name = "resolved.txt" if flavour == "generic" else f"resolved-{flavour}.txt"
    resolved = cache / "kernel" / name
    if package is None and resolved.exists():
        package = resolved.read_text().strip()
    if package is None:
        package = resolve_package(FLAVOURS[flavour])
        resolved.parent.mkdir(parents=True, exist_ok=True)
        resolved.write_text(package + "\n")
    version = package.removeprefix("linux-image-")
    unpacked = cache / "kernel" / package
    done_marker = unpacked / ".unpacked"
    source = "cache hit"
    if not done_marker.exists():
        source = "downloaded"
        debs = cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        deb = _find_deb(debs, package)
        if deb is None:
            # apt-get download writes into the working directory; run it with cwd=debs.
            _run_in(["apt-get", "download", "-q", package], cwd=debs)
            deb = _find_deb(debs, package)
            if deb is None:
                raise ToolError(f"apt-get download {package} produced no .deb", source=package)
        else:
            source = "cache hit (deb), unpacked"
        if unpacked.exists():
            shutil.rmtree(unpacked)
        unpacked.mkdir(parents=True)
        tools.run(["dpkg-deb", "-x", str(deb), str(unpacked)], timeout=300)
        _decompress_modules(unpacked / "lib" / "modules" / version)
        done_marker.write_text(package + "\n")
    return Kernel(
        package=package,
        version=version,
        vmlinuz=unpacked / "boot" / f"vmlinuz-{version}",
        modules_dir=unpacked / "lib" / "modules" / version,
        source=source,
    )


def _run_in(argv: list[str], *, cwd: Path) -> None:
    """Like pvreal.tools.run, in a given working directory (apt-get download writes there)."""
    tools.require(argv[0])
    done = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolError(
            f"exit status {done.returncode} from {' '.join(argv)}: {done.stderr.strip()}",
            source=argv[0],
        )


def _find_deb(folder: Path, package: str) -> Path | None:
    found = sorted(folder.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def _decompress_modules(modules_dir: Path) -> None:
    """Newer kernel packages may ship .ko.xz; the guest loads modules with finit_module, so unpack."""
    for packed in modules_dir.rglob("*.ko.xz"):
        packed.with_suffix("").write_bytes(lzma.decompress(packed.read_bytes()))
        packed.unlink()


def module_index(modules_dir: Path) -> dict[str, Path]:
    """{module name: its .ko file} for every module in the tree."""
    return {module_name(p.name): p for p in modules_dir.rglob("*.ko")}


def module_name(path: str) -> str:
    """kernel/drivers/md/dm-verity.ko -> dm_verity (the kernel treats - and _ alike)."""
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def module_depends(ko: Path) -> list[str]:
    """The `depends=` field of a module's .modinfo section (what depmod reads), as names.

    Reading it directly means neither kmod nor depmod is needed on the build host.
    """
    data = ko.read_bytes()
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    end = data.index(b"\0", at + 1)
    field = data[at + len(b"\0depends=") : end].decode()
    return [module_name(n) for n in field.split(",") if n]


def load_order(names: list[str], modules_dir: Path) -> list[Path]:
    """The .ko files of `names` and all their dependencies, each after what it needs.

    Names missing from the tree are ignored when the kernel has them built in (modules.builtin).
    """
    index = module_index(modules_dir)
    listing = modules_dir / "modules.builtin"
    builtin = {module_name(n) for n in listing.read_text().split()} if listing.exists() else set()
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            if name in builtin:
                return
            raise ToolError(f"kernel module {name} is not in the kernel package", source=name)
        for dep in module_depends(index[name]):
            visit(dep)
        order.append(index[name])

    for name in names:
        visit(name.replace("-", "_"))
    return order
