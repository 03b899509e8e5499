"""Boot environment files as `pvreal env` edits them: find the format, read, write back.

The format is detected from the content unless given. A corrupt or truncated file is reported
(naming the file and the problem) and never rewritten. With `hardened`, the file is the primary
of a hardened two-copy store (pvreal.bootenv.store): a damaged copy becomes a warning and the
other one is used; a write goes through the store (and so repairs the damaged copy).

Which copy of a two-copy env is current (`Opened.copies`) is said for a hardened pair and for a
U-Boot redundant image whose partner (`NAME-redund.SUFFIX`, or `NAME.SUFFIX` for the -redund one)
lies beside it: the valid copy with the newer flags byte (U-Boot's rule) or sequence marker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pvreal.bootenv import layout as layouts
from pvreal.bootenv import store, ubootenv
from pvreal.bootenv.errors import BootEnvError, EnvCorrupt
from pvreal.bootenv.layout import EnvLayout
from pvreal.durable import atomic_write, write_in_place


@dataclass(frozen=True)
class EnvFile:
    """Where the env is and how it is laid out; None and False leave it to detection."""

    file: Path
    format: str | None = None
    size: int | None = None
    redundant: bool = False
    hardened: bool = False  # `file` is the first of the hardened store's two copies
    second: Path | None = None  # with hardened: the second copy (default: NAME-redund.SUFFIX)


@dataclass(frozen=True)
class CopyInfo:
    """One copy of a two-copy env: `role` is current, stale (older), identical (to the current
    one), damaged or missing; `seq` its U-Boot flags byte (`seq_name` "flags") or the hardened
    GRUB store's sequence marker ("sequence")."""

    path: Path
    role: str
    seq: int | None
    seq_name: str
    problem: str | None = None

    def describe(self, number: int) -> str:
        detail = self.role
        if self.seq is not None:
            detail += f", {self.seq_name} {self.seq}"
        if self.problem is not None and self.role != "missing":
            detail += f": {self.problem}"
        return f"copy {number} {self.path} ({detail})"

    def as_json(self) -> dict[str, object]:
        return {"path": str(self.path), "role": self.role, self.seq_name: self.seq,
                "problem": self.problem}


@dataclass(frozen=True)
class Opened:
    """The variables found, how to write a new set of them back to the same place, what was
    wrong with a copy the hardened store passed over, and (two-copy envs) the state of each copy."""

    env: dict[str, str]
    write: Callable[[dict[str, str]], None]
    warnings: tuple[str, ...] = ()
    copies: tuple[CopyInfo, ...] = ()


def open_env(opts: EnvFile, *, create: bool = False) -> Opened:
    """The env of `opts.file` (a new, empty one with `create` when the file is missing)."""
    if opts.hardened:
        return _open_pair(opts, create=create)
    if opts.second is not None:
        raise BootEnvError("--second needs --hardened", source=str(opts.file))
    layout, env, old = _read(opts, create=create)
    copies: tuple[CopyInfo, ...] = ()
    warnings: tuple[str, ...] = ()
    if old is not None and layout.format == layouts.UBOOT and layout.redundant:
        copies, warnings = _partner_copies(opts.file, layout)
    return Opened(env, lambda new_env: _write(opts.file, layout, new_env, old), warnings, copies)


def _copy_infos(report: store.LoadReport, seq_name: str) -> tuple[CopyInfo, ...]:
    chosen = report.copies[report.chosen] if report.chosen is not None else None

    def role(index: int, copy: store.CopyState) -> str:
        if index == report.chosen:
            return "current"
        if not copy.valid:
            return "missing" if copy.missing else "damaged"
        # both copies written by one save (GRUB's pair always, U-Boot's first save): a twin
        same = chosen is not None and (copy.seq, copy.env) == (chosen.seq, chosen.env)
        return "identical" if same else "stale"

    return tuple(
        CopyInfo(c.path, role(i, c), c.seq, seq_name, c.problem) for i, c in enumerate(report.copies)
    )


def _partner_copies(
    path: Path, layout: EnvLayout
) -> tuple[tuple[CopyInfo, ...], tuple[str, ...]]:
    """A U-Boot redundant image read on its own: which copy of its pair is current, when the
    partner is there (else nothing to say); a warning when the file listed is not the current one."""
    primary, second = store.default_pair(path)
    if not (primary.exists() and second.exists()):
        return (), ()
    try:
        report = store.HardenedUbootStore(primary, second, size=layout.size).inspect()
    except BootEnvError:
        return (), ()
    copies = _copy_infos(report, "flags")
    if report.chosen is None or copies[report.chosen].path == path:
        return copies, ()
    current = copies[report.chosen]
    return copies, (
        f"{path} is not the current copy of its pair: {current.path} is "
        f"(flags {current.seq}); read the pair with --hardened",
    )


def _read(
    opts: EnvFile, *, create: bool = False
) -> tuple[EnvLayout, dict[str, str], bytes | None]:
    """The file's layout, its variables and its raw bytes (None for a file still to create)."""
    source = str(opts.file)
    try:
        data = opts.file.read_bytes()
    except FileNotFoundError:
        if not create:
            raise BootEnvError("no such file", source=source) from None
        return _new_layout(opts), {}, None
    except OSError as exc:
        raise BootEnvError(f"cannot read: {exc.strerror}", source=source) from None
    layout = _existing_layout(opts, data)
    return layout, layout.decode(data, source=source), data


def _new_layout(opts: EnvFile) -> EnvLayout:
    fmt = opts.format or layouts.GRUB
    if fmt == layouts.UBOOT:
        return layouts.uboot(opts.size or ubootenv.DEFAULT_SIZE, redundant=opts.redundant)
    _reject_uboot_options(opts, fmt)
    return layouts.grub() if fmt == layouts.GRUB else layouts.uboot_txt()


def _existing_layout(opts: EnvFile, data: bytes) -> EnvLayout:
    source = str(opts.file)
    if opts.format in (layouts.GRUB, layouts.UBOOT_TXT):
        _reject_uboot_options(opts, opts.format)
        return layouts.grub() if opts.format == layouts.GRUB else layouts.uboot_txt()
    redundant = True if opts.redundant else None
    found = layouts.detect_layout(data, size=opts.size, redundant=redundant)
    if found is not None and opts.format in (None, found.format):
        if found.format != layouts.UBOOT:
            _reject_uboot_options(opts, found.format)
        return found
    if opts.format == layouts.UBOOT:  # say why the CRC does not match, or that it is truncated
        size = opts.size or len(data)
        if size <= ubootenv.REDUNDANT_HEADER:
            raise EnvCorrupt(f"is {len(data)} bytes, too short for a U-Boot env", source=source)
        if len(data) < size:
            layouts.uboot(size).decode(data, source=source)  # raises: truncated
        ubootenv.decode_image(data[:size], redundant=redundant, source=source)  # raises: CRC
    raise EnvCorrupt(layouts.describe_unknown(data, size=opts.size), source=source)


def _open_pair(opts: EnvFile, *, create: bool) -> Opened:
    """FILE as the primary of a hardened two-copy store (pvreal.bootenv.store)."""
    primary = opts.file
    secondary = opts.second or store.redund_path(primary)
    found = (_read_optional(primary), _read_optional(secondary))
    existing = [data for data in found if data is not None]
    if not existing and not create:
        raise BootEnvError(f"no such file, nor its second copy {secondary}", source=str(primary))
    try:
        if existing:
            layout = _pair_layout(opts, existing, (primary, secondary))
        else:
            layout = _new_layout(opts)
            if layout.format == layouts.UBOOT:
                layout = layouts.uboot(layout.size, redundant=True)
        env_store = store.open_store(primary, layout, store.HARDENED, secondary=secondary)
    except ValueError as exc:  # an impossible layout, e.g. uboot-txt, or a U-Boot env too small
        raise BootEnvError(str(exc), source=str(primary)) from None
    report = env_store.inspect()  # EnvCorrupt when neither copy is valid: nothing is written
    chosen = report.copies[report.chosen].path if report.chosen is not None else "none"
    warnings = tuple(f"{copy.path}: {copy.problem}; using {chosen}" for copy in report.damaged)
    copies = _copy_infos(report, "flags" if layout.format == layouts.UBOOT else "sequence")

    def save(env: dict[str, str]) -> None:
        try:
            env_store.save(env)
        except OSError as exc:
            raise BootEnvError(
                f"cannot write: {exc.strerror}", source=str(exc.filename or primary)
            ) from None

    return Opened(report.env, save, warnings, copies)


def _pair_layout(
    opts: EnvFile, copies: list[bytes], paths: tuple[Path, Path]
) -> EnvLayout:
    """The layout of a two-copy store, from the first copy that is recognisable."""
    for data in copies:
        found = layouts.detect_layout(data, size=opts.size)
        if found is not None and opts.format in (None, found.format):
            if found.format == layouts.UBOOT:
                return layouts.uboot(found.size, redundant=True)
            _reject_uboot_options(opts, found.format)
            return found
    if opts.format == layouts.UBOOT:  # let the store say what is wrong with each copy
        return layouts.uboot(opts.size or len(copies[0]), redundant=True)
    if opts.format == layouts.GRUB:
        return layouts.grub()
    raise EnvCorrupt(
        f"neither {paths[0]} nor {paths[1]} is a recognisable GRUB block or U-Boot image "
        "(corrupt or truncated; pass --format/--size to see why)",
        source=str(paths[0]),
    )


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BootEnvError(f"cannot read: {exc.strerror}", source=str(path)) from None


def _reject_uboot_options(opts: EnvFile, fmt: str) -> None:
    if opts.size is not None or opts.redundant:
        raise BootEnvError(
            f"--size and --redundant apply to U-Boot images only, and this is {fmt}",
            source=str(opts.file),
        )


def _write(path: Path, layout: EnvLayout, env: dict[str, str], old: bytes | None) -> None:
    """Encode first (a too-big env fails here, before any write), then write durably.

    A file that is exactly the env is replaced atomically. A U-Boot env that is only the start of
    a larger file (a partition image) is overwritten in place, keeping the rest of the file.
    """
    flags = 1
    if layout.redundant and old is not None:
        flags = (old[ubootenv.SINGLE_HEADER] + 1) & 0xFF  # a save bumps the serial, as fw_setenv
    image = layout.encode(env, flags=flags, source=str(path))
    try:
        if old is None or len(old) == layout.size:
            atomic_write(path, image)
        else:
            write_in_place(path, image)
    except OSError as exc:
        raise BootEnvError(f"cannot write: {exc.strerror}", source=str(path)) from None
