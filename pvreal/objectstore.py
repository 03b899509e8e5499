"""The object pool: a flat folder of objects named by their sha256 (`/storage/objects`).

Nothing enters it without being re-hashed: uploads and downloads land in `<sha>.tmp` and are
renamed into place only when their bytes hash to the name (`commit_tmp`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from pvreal.durable import fsync_dir
from shared.errors import PvError
from shared.state import is_sha256

_CHUNK = 1 << 20


class ObjectError(PvError):
    """An object that is missing, malformed or whose bytes do not hash to its name."""


class ObjectHashMismatch(ObjectError):
    """The bytes written for an object hash to something else; the partial file was deleted."""


def is_sha(value: object) -> bool:
    return is_sha256(value)  # the one object-name rule (shared.state)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()



class ObjectStore:
    """A flat folder of objects named by their sha256; nothing enters it without being re-hashed."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def path(self, sha: str) -> Path:
        if not is_sha(sha):
            raise ObjectError("object name must be 64 lowercase hex digits", key=sha)
        return self.dir / sha

    def tmp_path(self, sha: str) -> Path:
        return self.dir / f"{sha}.tmp"

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def is_valid(self, sha: str) -> bool:
        path = self.path(sha)
        return path.is_file() and sha256_file(path) == sha

    def size(self, sha: str) -> int:
        return self.path(sha).stat().st_size

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(n for n in os.listdir(self.dir) if is_sha256(n))

    def partial_names(self) -> list[str]:
        """Leftover `<sha>.tmp` files of interrupted downloads or uploads."""
        if not self.dir.is_dir():
            return []
        return sorted(n for n in os.listdir(self.dir) if n.endswith(".tmp"))

    def discard_partials(self) -> list[str]:
        removed = self.partial_names()
        for name in removed:
            (self.dir / name).unlink(missing_ok=True)
        return removed

    def commit_tmp(self, sha: str) -> Path:
        """Re-hash `<sha>.tmp`; rename it into place when it matches, delete it and raise if not."""
        tmp = self.tmp_path(sha)
        actual = sha256_file(tmp)
        if actual != sha:
            tmp.unlink(missing_ok=True)
            raise ObjectHashMismatch(
                f"content hashes to {actual}; partial file deleted", source=str(tmp), key=sha
            )
        final = self.path(sha)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(self.dir)
        return final

    def put_stream(self, sha: str, stream: BinaryIO) -> bool:
        """Store the bytes read from `stream` as object `sha`.

        Returns False (and reads nothing) when a valid object of that name already exists.
        """
        if self.is_valid(sha):
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_path(sha)
        with open(tmp, "wb") as out:
            shutil.copyfileobj(stream, out, _CHUNK)
        self.commit_tmp(sha)
        return True

    def put_bytes(self, sha: str, data: bytes) -> bool:
        if self.is_valid(sha):
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp_path(sha).write_bytes(data)
        self.commit_tmp(sha)
        return True

    def add_file(self, src: Path) -> str:
        """Hash `src` and store it under its own sha (build tools); returns the sha."""
        sha = sha256_file(src)
        if not self.is_valid(sha):
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, self.tmp_path(sha))
            self.commit_tmp(sha)
        return sha

    def add_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.put_bytes(sha, data)
        return sha

    def adopt_file(self, src: Path) -> str:
        """Move a freshly built file (same filesystem) into the pool under its sha."""
        sha = sha256_file(src)
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.is_valid(sha):
            src.unlink()
        else:
            os.replace(src, self.tmp_path(sha))
            self.commit_tmp(sha)
        return sha
