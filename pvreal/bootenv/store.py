"""Where a device keeps its boot env: one file rewritten in place, or two copies that survive torn writes.

Two flavours behind one interface (`load() -> dict`, `save(mapping)`):

- `FaithfulStore`: one file rewritten in place with O_SYNC, as Pantavisor does with uboot.txt and
  grubenv. Not atomic: a power cut mid-write can tear the only copy.
- Hardened stores keep two copies with a sequence marker, so a torn write of one copy never loses
  both. `load` picks the valid copy with the newest marker and reports a corrupt copy.
  - `HardenedUbootStore`: U-Boot's own redundant layout (CRC + flags byte), two files of the
    same size, like U-Boot's env-in-FAT `uboot.env` + `uboot-redund.env`. Each save writes the
    *older* copy in place with flags = newer flags + 1, so the current copy is never touched.
    fw_printenv/fw_setenv and U-Boot read the pair with a two-line fw_env.config.
  - `HardenedGrubStore`: GRUB reads exactly one grubenv, so the primary is written atomically
    (temp file + rename), then a second copy; the sequence marker is a variable in the block.

The update engine chooses which ordering a device uses; this module only provides the storage.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pvreal.bootenv import grubenv, ubootenv
from pvreal.bootenv.errors import BootEnvError, EnvCorrupt, InvalidEntry
from pvreal.bootenv.layout import EnvLayout, grub, uboot
from pvreal.durable import atomic_write, write_in_place

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # a library: the application decides where warnings go

FAITHFUL, HARDENED = "faithful", "hardened"
ORDERINGS = (FAITHFUL, HARDENED)
# The hardened GRUB store's sequence marker, stored as an ordinary variable in both copies.
GRUB_SEQ_KEY = "pvtwin_env_seq"
REDUND_SUFFIX = "-redund"  # the second copy's name: NAME-redund.SUFFIX


class EnvStore(Protocol):
    """A device's boot env storage."""

    @property
    def paths(self) -> tuple[Path, ...]: ...

    def load(self) -> dict[str, str]:
        """The current variables; {} when nothing was ever saved. EnvCorrupt when unreadable."""
        ...

    def save(self, env: Mapping[str, str]) -> None:
        """Durably replace all variables with `env` (EnvFull/InvalidEntry before any write)."""
        ...


@dataclass(frozen=True)
class CopyState:
    """What one copy of a hardened store holds. `problem` is None for a valid copy."""

    path: Path
    env: dict[str, str] | None = None
    seq: int | None = None
    problem: str | None = None

    @property
    def missing(self) -> bool:
        return self.problem == "missing"

    @property
    def valid(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class LoadReport:
    """The result of reading both copies: the chosen env and the state of every copy."""

    env: dict[str, str]
    chosen: int | None  # index into copies; None when no copy exists yet
    copies: tuple[CopyState, ...]

    @property
    def damaged(self) -> tuple[CopyState, ...]:
        """Copies that exist but cannot be read (torn, truncated, bad CRC ...)."""
        return tuple(c for c in self.copies if not c.valid and not c.missing)


class FaithfulStore:
    """One file, rewritten in place (Pantavisor's way): simple, and tearable by a power cut."""

    def __init__(self, path: str | Path, layout: EnvLayout):
        self.path = Path(path)
        self.layout = layout

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path,)

    def load(self) -> dict[str, str]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        return self.layout.decode(data, source=str(self.path))

    def save(self, env: Mapping[str, str]) -> None:
        write_in_place(self.path, self.layout.encode(env, source=str(self.path)))


class _TwoCopyStore:
    """The shared half of both hardened stores: read both copies, pick the newest valid one."""

    def __init__(self, primary: str | Path, secondary: str | Path | None):
        self.primary = Path(primary)
        self.secondary = Path(secondary) if secondary is not None else redund_path(self.primary)
        if self.primary == self.secondary:
            raise ValueError(f"{self.primary}: the two copies must be different files")

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.primary, self.secondary)

    def inspect(self) -> LoadReport:
        copies = tuple(self._read_copy(path) for path in self.paths)
        valid = [i for i, c in enumerate(copies) if c.valid]
        if not valid:
            if all(c.missing for c in copies):
                return LoadReport({}, None, copies)
            reasons = "; ".join(f"{c.path}: {c.problem}" for c in copies)
            raise EnvCorrupt(f"no valid copy of the boot env ({reasons})", source=str(self.primary))
        chosen = valid[0] if len(valid) == 1 else self._newer(copies[0], copies[1])
        report = LoadReport(dict(copies[chosen].env or {}), chosen, copies)
        for copy in report.damaged:
            log.warning(
                "boot env copy %s is damaged (%s); using %s",
                copy.path,
                copy.problem,
                copies[chosen].path,
            )
        return report

    def load(self) -> dict[str, str]:
        return self.inspect().env

    def _read_copy(self, path: Path) -> CopyState:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return CopyState(path, problem="missing")
        try:
            return self._decode_copy(path, data)
        except BootEnvError as exc:
            return CopyState(path, problem=exc.message)

    def _decode_copy(self, path: Path, data: bytes) -> CopyState:
        raise NotImplementedError

    def _newer(self, first: CopyState, second: CopyState) -> int:
        raise NotImplementedError


class HardenedUbootStore(_TwoCopyStore):
    """Two U-Boot env images in the redundant layout; a save rewrites only the older one."""

    def __init__(
        self,
        primary: str | Path,
        secondary: str | Path | None = None,
        *,
        size: int = ubootenv.DEFAULT_SIZE,
    ):
        super().__init__(primary, secondary)
        self.layout = uboot(size, redundant=True)

    def _decode_copy(self, path: Path, data: bytes) -> CopyState:
        if len(data) != self.layout.size:
            hint = " (truncated?)" if len(data) < self.layout.size else ""
            return CopyState(
                path, problem=f"is {len(data)} bytes{hint}, expected {self.layout.size}"
            )
        image = ubootenv.decode_image(data, redundant=True, source=str(path))
        return CopyState(path, image.env, image.flags)

    def _newer(self, first: CopyState, second: CopyState) -> int:
        return ubootenv.newer_copy(first.seq or 0, second.seq or 0)

    def save(self, env: Mapping[str, str]) -> None:
        try:
            report = self.inspect()
            chosen, copies = report.chosen, report.copies
        except EnvCorrupt:  # no valid copy at all: start again from copy 0
            chosen, copies = None, tuple(self._read_copy(p) for p in self.paths)
        if chosen is None:
            target, flags = 0, 1
        else:
            target, flags = 1 - chosen, ((copies[chosen].seq or 0) + 1) & 0xFF
        image = self.layout.encode(env, flags=flags, source=str(self.paths[target]))
        write_in_place(self.paths[target], image)
        # A first save also creates the other copy, so fw_env.config's two files both exist.
        other = self.paths[1 - target]
        if copies[1 - target].missing:
            write_in_place(other, image)


class HardenedGrubStore(_TwoCopyStore):
    """grubenv written atomically, plus a second copy; both carry a sequence variable.

    GRUB itself reads only the primary. GRUB's `save_env` (the pv_trying latch) rewrites the
    primary in place without touching the sequence variable, so on equal sequences the
    primary wins: it holds GRUB's latest change.
    """

    def __init__(self, primary: str | Path, secondary: str | Path | None = None):
        super().__init__(primary, secondary)
        self.layout = grub()

    def _decode_copy(self, path: Path, data: bytes) -> CopyState:
        env = grubenv.decode(data, source=str(path))
        raw_seq = env.pop(GRUB_SEQ_KEY, "0")
        if not raw_seq.isdigit():
            return CopyState(path, problem=f"{GRUB_SEQ_KEY}={raw_seq!r} is not a number")
        return CopyState(path, env, int(raw_seq))

    def _newer(self, first: CopyState, second: CopyState) -> int:
        return 1 if (second.seq or 0) > (first.seq or 0) else 0

    def save(self, env: Mapping[str, str]) -> None:
        if GRUB_SEQ_KEY in env:
            raise InvalidEntry(
                "reserved for the hardened store's sequence marker",
                source=str(self.primary),
                key=GRUB_SEQ_KEY,
            )
        copies = tuple(self._read_copy(p) for p in self.paths)
        seq = max((c.seq or 0 for c in copies if c.valid), default=0) + 1
        block = self.layout.encode({**env, GRUB_SEQ_KEY: str(seq)}, source=str(self.primary))
        # Primary first: whatever happens next, the copy GRUB reads is already the newest.
        atomic_write(self.primary, block)
        atomic_write(self.secondary, block)


def redund_path(primary: Path) -> Path:
    """The default second copy: `uboot.env` -> `uboot-redund.env` (U-Boot's env-in-FAT names)."""
    return primary.with_name(f"{primary.stem}{REDUND_SUFFIX}{primary.suffix}")


def default_pair(path: Path) -> tuple[Path, Path]:
    """(primary, second) of the default pair `path` belongs to, whichever of the two it is."""
    if path.stem.endswith(REDUND_SUFFIX):
        return path.with_name(path.stem[: -len(REDUND_SUFFIX)] + path.suffix), path
    return path, redund_path(path)



def open_store(
    path: str | Path,
    layout: EnvLayout,
    ordering: str = FAITHFUL,
    *,
    secondary: str | Path | None = None,
) -> EnvStore:
    """The store for `layout` under an ordering: `faithful` (one file) or `hardened` (two copies)."""
    if ordering == FAITHFUL:
        if secondary is not None:
            raise ValueError("a faithful store has a single file")
        return FaithfulStore(path, layout)
    if ordering != HARDENED:
        raise ValueError(f"unknown ordering {ordering!r}; expected one of {ORDERINGS}")
    if layout.format == "grub":
        return HardenedGrubStore(path, secondary)
    if layout.format == "uboot":
        return HardenedUbootStore(path, secondary, size=layout.size)
    raise ValueError(
        f"no hardened store for {layout.format!r}: Pantavisor's uboot.txt has no redundant form; "
        "use the 'uboot' format"
    )
