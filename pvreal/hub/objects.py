"""The Hub's object store: one file per sha256 in a folder beside the database.

An upload streams into a temp file in the same folder while it is hashed; it becomes
`<sha>` (fsync'd, renamed, folder fsync'd) only when its bytes hash to the name it was sent under.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from pvreal.durable import fsync_dir
from shared.state import is_sha256


class BadObject(ValueError):
    """The bytes do not hash to the name they were uploaded under, or are too large."""


class ObjectStore:
    def __init__(self, folder: str | Path) -> None:
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        if not is_sha256(sha):  # the one check that keeps a name inside the folder
            raise BadObject(f"not a sha256: {sha[:80]!r}")
        return self.dir / sha

    def has(self, sha: str) -> bool:
        return is_sha256(sha) and self.path(sha).is_file()

    def writer(self, sha: str, limit: int) -> ObjectWriter:
        return ObjectWriter(self, sha, limit)


class ObjectWriter:
    """Feed chunks, then `commit()`; `abort()` (or leaving without commit) removes the temp file."""

    def __init__(self, store: ObjectStore, sha: str, limit: int) -> None:
        self.target = store.path(sha)
        self.sha, self.limit, self.size = sha, limit, 0
        self.hasher = hashlib.sha256()
        fd, self.tmp = tempfile.mkstemp(prefix=f".{sha[:16]}.", suffix=".tmp", dir=store.dir)
        self.file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise BadObject(f"object is larger than the {self.limit} B limit")
        self.hasher.update(chunk)
        self.file.write(chunk)

    def commit(self) -> int:
        if self.hasher.hexdigest() != self.sha:
            raise BadObject(f"content hashes to {self.hasher.hexdigest()}, not {self.sha}")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.target)
        fsync_dir(self.target.parent)
        return self.size

    def abort(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
