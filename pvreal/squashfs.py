"""Building root volumes: reproducible squashfs images and dm-verity hash trees.

Reproducible means the same input folder gives the same bytes, hence the same object sha:
every file owned by root, every timestamp 0, no xattrs, no appending to an old image.
dm-verity: `veritysetup format` builds the hash tree; its salt and uuid are derived from the data
image's sha so that the hash object and root hash are reproducible too. The host kernel here has
no device-mapper, so `verify` checks a tree in userspace (`veritysetup verify`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pvreal import tools
from pvreal.objectstore import sha256_file

MKSQUASHFS_OPTIONS = (
    "-noappend",
    "-all-root",
    "-mkfs-time",
    "0",
    "-all-time",
    "0",
    "-no-xattrs",
    "-comp",
    "zstd",
    "-Xcompression-level",
    "3",  # zstd's default level (15) takes ~40x longer for a few % of size
    "-no-progress",
    "-quiet",
)
_ROOT_HASH_RE = re.compile(r"^Root hash:\s*([0-9a-f]+)\s*$", re.MULTILINE)


def make_squashfs(src_dir: Path, out: Path, *, runner: tools.Runner = tools.run) -> None:
    """Pack `src_dir` into the squashfs image `out` (replaced if it exists)."""
    if not Path(src_dir).is_dir():
        raise tools.ToolError("root filesystem folder not found", source=str(src_dir))
    runner(["mksquashfs", str(src_dir), str(out), *MKSQUASHFS_OPTIONS])


@dataclass(frozen=True, slots=True)
class VerityInfo:
    """The fields of Pantavisor's `<name>/_dm/<vol>.json` (without the device names)."""

    root_hash: str
    salt: str
    uuid: str

    def dm_json(self, data_device: str, hash_device: str) -> dict[str, str]:
        return {
            "type": "dm-verity",
            "data_device": data_device,
            "hash_device": hash_device,
            "root_hash": self.root_hash,
            "salt": self.salt,
            "uuid": self.uuid,
        }


def verity_format(data: Path, hash_out: Path, *, runner: tools.Runner = tools.run) -> VerityInfo:
    """Write the dm-verity hash tree of `data` into `hash_out`; a clear error without veritysetup."""
    import uuid  # here, not at the top: the device imports this module at boot, uuid costs there

    data_sha = sha256_file(data)
    salt = hashlib.sha256(b"pvtwin-verity-salt:" + data_sha.encode()).hexdigest()
    vuuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"pvtwin:verity:{data_sha}"))
    hash_out.unlink(missing_ok=True)
    out = runner(
        ["veritysetup", "format", f"--salt={salt}", f"--uuid={vuuid}", str(data), str(hash_out)]
    )
    match = _ROOT_HASH_RE.search(out)
    if not match:
        raise tools.ToolError("no 'Root hash' in veritysetup output", source=str(data))
    return VerityInfo(match.group(1), salt, vuuid)


def verity_verify(
    data: Path, hash_file: Path, root_hash: str, *, runner: tools.Runner = tools.run
) -> bool:
    """Userspace check of a whole image against its hash tree (no device-mapper needed)."""
    try:
        runner(["veritysetup", "verify", str(data), str(hash_file), root_hash])
    except tools.ToolError as exc:
        if "not found on PATH" in exc.message:
            raise  # a missing tool is not a failed check
        return False
    return True
