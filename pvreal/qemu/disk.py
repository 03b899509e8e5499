"""The storage disk: a raw image with an MBR and one ext4 partition, built without root.

Partition 1 (from LBA 2048) is Pantavisor's storage: /boot/grubenv and /trails/<rev>/.pv/
{pv-kernel.img, pv-initrd.img}. It is made by `mkfs.ext4 -E offset=... -d TREE` straight from a
folder; the MBR is 66 bytes written here (no sfdisk needed). inline_data is switched off on
purpose: GRUB 2.06 cannot read such a filesystem at all (grub-qemu.md §4).

Host-side access between boots goes through debugfs on `image?offset=...`, never a mount, and
never while QEMU runs. The grubenv is rewritten in place in its data block, as Pantavisor does
(ext4 metadata_csum does not cover data blocks, so e2fsck stays clean).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from collections.abc import Mapping
from pathlib import Path

from pvreal import tools
from pvreal.bootenv import grub as grub_layout
from pvreal.tools import ToolError

SECTOR = 512
PART_START_LBA = 2048
PART_OFFSET = PART_START_LBA * SECTOR
ENV_FILE = "boot/grubenv"
DEFAULT_SIZE_MB = 256


def write_mbr(image: Path, size_bytes: int) -> None:
    """One bootable Linux (0x83) partition from LBA 2048 to the end; CHS fields are unused."""
    sectors = size_bytes // SECTOR - PART_START_LBA
    entry = struct.pack(
        "<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", PART_START_LBA, sectors
    )
    with image.open("r+b") as disk:
        disk.seek(440)
        disk.write(struct.pack("<IH", 0x50565457, 0))  # disk signature "PVTW"
        disk.write(entry + b"\0" * 48 + b"\x55\xaa")


def encode_env(env: Mapping[str, str]) -> bytes:
    """A full 1024-byte grubenv block (never sparse: GRUB refuses sparse files)."""
    return grub_layout().encode(dict(env), source=ENV_FILE)


def stage_tree(
    tree: Path,
    revisions: Mapping[str, tuple[Path, Path]],
    env: Mapping[str, str],
    extra: Mapping[str, bytes] | None = None,
) -> None:
    """Lay out the storage tree: revisions {rev: (kernel, initrd)}, the grubenv, extra files."""
    if tree.exists():
        shutil.rmtree(tree)
    (tree / "boot").mkdir(parents=True)
    (tree / ENV_FILE).write_bytes(encode_env(env))
    for rev, (kernel, initrd) in revisions.items():
        pv = tree / "trails" / rev / ".pv"
        pv.mkdir(parents=True)
        _link_or_copy(kernel, pv / "pv-kernel.img")
        _link_or_copy(initrd, pv / "pv-initrd.img")
    for relative, data in (extra or {}).items():
        target = tree / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _link_or_copy(source: Path, target: Path) -> None:
    # Pantavisor's trails hard-link objects too; a copy is the fallback across filesystems.
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def make_image(image: Path, tree: Path, size_mb: int = DEFAULT_SIZE_MB) -> None:
    """Build the raw disk `image` from the staged `tree` (atomically replaces `image`)."""
    tmp = image.with_name(image.name + ".tmp")
    size = size_mb * 1024 * 1024
    with tmp.open("wb") as disk:
        disk.truncate(size)
    write_mbr(tmp, size)
    part_kib = (size - PART_OFFSET) // 1024
    tools.run(
        [
            tools.require("mkfs.ext4"), "-q", "-F", "-L", "pvstorage", "-O", "^inline_data",
            "-E", f"offset={PART_OFFSET}", "-d", str(tree), str(tmp), f"{part_kib}k",
        ],
        timeout=300,
    )  # fmt: skip
    tmp.replace(image)


def _fs(image: Path) -> str:
    return f"{image}?offset={PART_OFFSET}"


def read_file(image: Path, path: str) -> bytes:
    """A file of the storage partition, read with debugfs (no root, no mount)."""
    debugfs = tools.require("debugfs")
    done = subprocess.run(
        [debugfs, "-R", f"cat /{path.lstrip('/')}", _fs(image)], capture_output=True, check=False
    )
    if done.returncode != 0 or b"File not found" in done.stderr:
        raise ToolError(
            f"{image}: cannot read /{path}: {done.stderr.decode().strip()}", source=str(image)
        )
    return done.stdout


def read_env(image: Path) -> dict[str, str]:
    """The grubenv on the image, decoded."""
    return grub_layout().decode(read_file(image, ENV_FILE), source=f"{image}:/{ENV_FILE}")


def write_file_in_place(image: Path, path: str, data: bytes) -> None:
    """Overwrite an existing file's data blocks in place; `data` must be exactly its size."""
    out = tools.run([tools.require("debugfs"), "-R", f"stat /{path.lstrip('/')}", _fs(image)])
    size_match = re.search(r"Size:\s*(\d+)", out)
    if not size_match or int(size_match.group(1)) != len(data):
        raise ToolError(
            f"{image}: /{path} is not {len(data)} bytes long: {out[:200]!r}", source=str(image)
        )
    stats = tools.run([tools.require("debugfs"), "-R", "stats", _fs(image)])
    block_match = re.search(r"Block size:\s*(\d+)", stats)
    if block_match is None:
        raise ToolError(f"{image}: debugfs stats names no block size", source=str(image))
    block_size = int(block_match.group(1))
    blocks_out = tools.run(
        [tools.require("debugfs"), "-R", f"blocks /{path.lstrip('/')}", _fs(image)]
    )
    blocks = [int(b) for b in blocks_out.split()]
    with image.open("r+b") as disk:
        for index, block in enumerate(blocks):
            chunk = data[index * block_size : (index + 1) * block_size]
            if not chunk:
                break
            disk.seek(PART_OFFSET + block * block_size)
            disk.write(chunk)
        disk.flush()
        os.fsync(disk.fileno())


def write_env(image: Path, env: Mapping[str, str]) -> None:
    """Rewrite the image's grubenv in place (the 1024 bytes GRUB reads), as Pantavisor would."""
    write_file_in_place(image, ENV_FILE, encode_env(env))


def fsck(image: Path) -> str:
    """`e2fsck -fn` of the partition (read-only check); raises ToolError when it finds problems."""
    return tools.run([tools.require("e2fsck"), "-fn", _fs(image)], timeout=120)
