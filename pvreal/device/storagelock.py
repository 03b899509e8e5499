"""One daemon per storage folder: an exclusive `flock` held for the daemon's whole life.

Two daemons on one folder would fight over its trails, mounts, network namespaces and runc root
(they derive every name from the storage path). The lock file holds the holder's PID so that the
refused daemon can name it; the kernel drops the lock when the holder exits, even on `kill -9`,
so a stale file never blocks a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from shared.errors import PvError

LOCK_NAME = ".pvtwin-device.lock"


class StorageBusy(PvError):
    """Another daemon holds the storage folder."""


class StorageLock:
    def __init__(self, root: Path):
        self.path = Path(root) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> StorageLock:
        """Take the lock or raise StorageBusy naming the holder's PID. Never blocks."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC: a container started by this daemon must not inherit (and so keep) the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StorageBusy(
                f"another device daemon (PID {holder}) runs on this storage; stop it first",
                source=str(self.path.parent),
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _holder(fd: int) -> str:
    """The PID the holder wrote, else the one /proc/locks names for this file (the holder may
    be between taking the lock and writing its PID)."""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        if text.isdigit():
            return text
    with contextlib.suppress(OSError):
        st = os.fstat(fd)
        wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == wanted:
                return fields[4]
    return "unknown"
