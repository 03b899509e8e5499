"""Durable writes: the one place where pvreal turns bytes into data that survives a power cut.

Two ways, on purpose:
- `atomic_write`: a temp file in the same folder, written in full, fsync'd, renamed over the
  target, then the folder fsync'd. Readers see the old bytes or the new bytes, never a mix.
- `write_in_place`: Pantavisor's own way for its boot env files (open with O_SYNC, overwrite,
  fsync). It is not atomic: a power cut mid-write can leave a torn file. The twin uses it where
  being faithful to Pantavisor matters more than being safe.

Neither ever leaves a hole: GRUB refuses sparse files ("sparse file not allowed"), so a block
must always be written in full and never extended by seeking past the end.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

DEFAULT_MODE = 0o644


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a folder's entries (a new or renamed file in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content.

    The file keeps its permission bits when it already exists (mkstemp would make it 0600),
    otherwise it gets `mode` (default 0644). The temp file is removed if anything fails.
    """
    target = Path(path)
    folder = target.parent
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = DEFAULT_MODE
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        try:
            _write_all(fd, data, 0)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(folder)


def write_in_place(path: str | os.PathLike[str], data: bytes, offset: int = 0) -> None:
    """Overwrite `len(data)` bytes of `path` at `offset` with O_SYNC, as Pantavisor does.

    Bytes outside that range are kept (the file is never truncated). A missing file is
    created. Writing past the current end would leave a hole, so it is refused.
    """
    target = Path(path)
    if offset < 0:
        raise ValueError(f"{target}: negative offset {offset}")
    existed = target.exists()
    current_size = target.stat().st_size if existed else 0
    if offset > current_size:  # checked before O_CREAT so a refused call creates nothing
        raise ValueError(
            f"{target}: writing at offset {offset} past the end ({current_size} bytes) "
            "would leave a hole (a sparse file)"
        )
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_SYNC, DEFAULT_MODE)
    try:
        _write_all(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    if not existed:
        fsync_dir(target.parent)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite until every byte is written (a single pwrite may write less)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
