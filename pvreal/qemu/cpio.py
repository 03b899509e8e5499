"""A newc ("070701") cpio writer: the format the kernel unpacks into the initramfs.

Written in Python so that device nodes (/dev/console, /dev/urandom ...) go into the archive
without root and without mknod, and so that the archive is byte-for-byte reproducible.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import BinaryIO

TRAILER = "TRAILER!!!"


class CpioWriter:
    """Append entries to a newc archive; `close()` writes the trailer."""

    def __init__(self, out: BinaryIO):
        self._out = out
        self._ino = 0
        self._written: set[str] = set()

    def _header(
        self, name: str, mode: int, size: int, mtime: int, rdev: tuple[int, int], nlink: int
    ) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (
            self._ino,
            mode,
            0,
            0,
            nlink,
            mtime,
            size,
            0,
            0,
            rdev[0],
            rdev[1],
            len(encoded),
            0,
        )
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded)
        self._pad(len(header) + len(encoded))

    def _pad(self, length: int) -> None:
        self._out.write(b"\0" * (-length % 4))

    def _claim(self, name: str) -> bool:
        """True the first time `name` is seen; writes its missing parent folders first
        (the kernel's unpacker does not create parents)."""
        name = name.strip("/")
        if name in self._written:
            return False
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in self._written:
                self._written.add(parent)
                self._header(parent, stat.S_IFDIR | 0o755, 0, 0, (0, 0), 2)
        self._written.add(name)
        return True

    def directory(self, name: str, mode: int = 0o755, mtime: int = 0) -> None:
        if self._claim(name):
            self._header(name.strip("/"), stat.S_IFDIR | mode, 0, mtime, (0, 0), 2)

    def file(self, name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        if self._claim(name):
            self._header(name.strip("/"), stat.S_IFREG | mode, len(data), mtime, (0, 0), 1)
            self._out.write(data)
            self._pad(len(data))

    def copy(self, name: str, source: Path) -> None:
        """A host file (following symlinks), keeping its mode bits and mtime (pyc checks mtime)."""
        st = source.stat()
        self.file(name, source.read_bytes(), stat.S_IMODE(st.st_mode), int(st.st_mtime))

    def symlink(self, name: str, target: str) -> None:
        if self._claim(name):
            data = target.encode()
            self._header(name.strip("/"), stat.S_IFLNK | 0o777, len(data), 0, (0, 0), 1)
            self._out.write(data)
            self._pad(len(data))

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o666) -> None:
        if self._claim(name):
            self._header(name.strip("/"), stat.S_IFCHR | mode, 0, 0, (major, minor), 1)

    def has(self, name: str) -> bool:
        return name.strip("/") in self._written

    def close(self) -> None:
        self._header(TRAILER, 0, 0, 0, (0, 0), 1)
