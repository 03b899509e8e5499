"""An exit injected at the N-th durable step: how `pvreal crashcheck` kills the daemon at every one.

The environment of a daemon process (read once, when its executor is built):

    PVTWIN_CRASH_AT_STEP=N   the process dies as if by SIGKILL (`os._exit(137)`: no cleanup, no
                             flush, only what is on disk survives) right before its N-th durable
                             command, counted from 0 since the process started;
    PVTWIN_CRASH_TORN=1      instead, in the middle of that command when it is tearable
                             (`shared.engine.driver.TEARABLE`; the executor says how far it gets);
    PVTWIN_CRASH_STEPS=PATH  every durable step that runs is appended to PATH first, one line
                             each: "1<TAB>description" for a tearable step, "0<TAB>..." otherwise.

Unset, nothing changes. Durable writes are synced before the next command starts
(pvreal.durable), so dying between two commands loses exactly what a power cut would.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.engine.commands import Command
from shared.engine.driver import TEARABLE
from shared.engine.invariants import describe_step

KILLED = 137  # the exit status of a process killed by SIGKILL, as a shell reports it
AT_STEP, TORN, STEPS = "PVTWIN_CRASH_AT_STEP", "PVTWIN_CRASH_TORN", "PVTWIN_CRASH_STEPS"


def die() -> None:
    os._exit(KILLED)


@dataclass
class CrashPlan:
    at: int | None = None
    torn: bool = False
    steps_log: Path | None = None
    count: int = 0  # durable steps begun by this process

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> CrashPlan:
        at = environ.get(AT_STEP, "")
        log = environ.get(STEPS, "")
        return cls(int(at) if at else None, environ.get(TORN) == "1", Path(log) if log else None)

    @property
    def armed(self) -> bool:
        return self.at is not None or self.steps_log is not None

    def before(self, command: Command) -> bool:
        """Called before each durable command. Dies here when the cut falls before it; True when
        the cut falls inside it (the caller does part of it, then calls `die`)."""
        index = self.count
        self.count += 1
        tearable = isinstance(command, TEARABLE)
        if self.at == index:
            if self.torn and tearable:
                return True
            die()
        if self.steps_log is not None:
            with open(self.steps_log, "a", encoding="utf-8") as out:
                out.write(f"{int(tearable)}\t{describe_step(command)}\n")
        return False


@contextlib.contextmanager
def first_write_cut_short() -> Iterator[None]:
    """The first in-place write (`os.pwrite`, as pvreal.durable.write_in_place does it) stops
    half-way through the bytes it changes, syncs them, and the process dies: a write torn by a
    power cut. (Half of the whole block would often change nothing: a 1 KiB uboot.txt is mostly
    padding.) A write by temp file and rename cannot tear; it completes, and the caller dies
    after it."""
    real = os.pwrite

    def torn(fd: int, data: bytes | memoryview, offset: int) -> int:
        new = bytes(data)
        old = os.pread(fd, len(new), offset).ljust(len(new), b"\0")
        changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
        cut = (changed[0] + changed[-1] + 1) // 2 if changed else len(new) // 2
        real(fd, new[: max(1, cut)], offset)
        os.fsync(fd)
        die()
        return 0  # not reached

    os.pwrite = torn  # type: ignore[assignment]  # the process dies in it
    try:
        yield
    finally:
        os.pwrite = real
