"""`pvreal env list|get|set|unset FILE`: read and edit GRUB and U-Boot boot environment files.

The format is detected from the content unless `--format` is given. A corrupt or truncated file
is reported (exit 1, naming the file and the problem) and never rewritten. With `--hardened`, FILE
is the primary of a hardened two-copy store: a damaged copy is reported as a warning and the other
one used; a write goes through the store (and so repairs the damaged copy).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pvreal.bootenv import layout as layouts
from pvreal.bootenv import store, ubootenv
from pvreal.bootenv.errors import BootEnvError, EnvCorrupt, InvalidEntry
from pvreal.bootenv.layout import EnvLayout
from pvreal.durable import atomic_write, write_in_place
from shared.canonical import dumps


def register(subparsers: argparse._SubParsersAction) -> None:
    env = subparsers.add_parser(
        "env",
        help="list, get, set and unset variables in GRUB and U-Boot boot env files",
        description=(
            "Boot environment files: GRUB's grubenv (1024-byte block), U-Boot env images "
            "(CRC32, single or redundant layout) and Pantavisor's uboot.txt."
        ),
    )
    verbs = env.add_subparsers(dest="verb", metavar="VERB", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("file", metavar="FILE", type=Path, help="the env file")
    common.add_argument(
        "--format",
        choices=layouts.FORMATS,
        help="env format (default: detected from the content; new files: grub)",
    )
    common.add_argument(
        "--size",
        type=_size,
        help="U-Boot env size in bytes, e.g. 8192 or 0x2000 "
        f"(default: the file size, {ubootenv.DEFAULT_SIZE} for a new file)",
    )
    common.add_argument(
        "--redundant",
        action="store_true",
        help="U-Boot redundant layout (a flags byte after the CRC, as mkenvimage -r)",
    )
    common.add_argument(
        "--hardened",
        action="store_true",
        help="FILE is the first of the two copies of the hardened store (docs/bootenv.md)",
    )
    common.add_argument(
        "--second",
        type=Path,
        metavar="FILE2",
        help="with --hardened: the second copy (default: NAME-redund.SUFFIX beside FILE)",
    )

    show = verbs.add_parser("list", parents=[common], help="print every variable as KEY=VALUE")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(func=_list)

    get = verbs.add_parser("get", parents=[common], help="print one variable's value")
    get.add_argument("key", metavar="KEY")
    get.add_argument("--json", action="store_true", help="print {KEY: VALUE} as JSON")
    get.set_defaults(func=_get)

    put = verbs.add_parser(
        "set", parents=[common], help="set variables; creates the file when missing"
    )
    put.add_argument("assignments", metavar="KEY=VALUE", nargs="+")
    put.set_defaults(func=_set)

    drop = verbs.add_parser("unset", parents=[common], help="remove variables")
    drop.add_argument("keys", metavar="KEY", nargs="+")
    drop.set_defaults(func=_unset)


def _list(args: argparse.Namespace) -> int:
    env = _open(args).env
    if args.json:
        print(dumps(env))
    else:
        for key, value in env.items():
            print(f"{key}={value}")
    return 0


def _get(args: argparse.Namespace) -> int:
    env = _open(args).env
    if args.key not in env:
        raise BootEnvError("variable not set", source=str(args.file), key=args.key)
    print(dumps({args.key: env[args.key]}) if args.json else env[args.key])
    return 0


def _set(args: argparse.Namespace) -> int:
    updates = {}
    for assignment in args.assignments:
        key, equals, value = assignment.partition("=")
        if not equals:
            raise InvalidEntry(
                f"expected KEY=VALUE, got {assignment!r}", source=str(args.file), key=key
            )
        updates[key] = value
    opened = _open(args, create=True)
    opened.write({**opened.env, **updates})
    return 0


def _unset(args: argparse.Namespace) -> int:
    opened = _open(args)
    remaining = {k: v for k, v in opened.env.items() if k not in args.keys}
    if remaining != opened.env:
        opened.write(remaining)
    return 0


@dataclass(frozen=True)
class _Opened:
    """The variables found, and how to write a new set of them back to the same place."""

    env: dict[str, str]
    write: Callable[[dict[str, str]], None]


def _open(args: argparse.Namespace, *, create: bool = False) -> _Opened:
    if args.hardened:
        return _open_pair(args, create=create)
    if args.second is not None:
        raise BootEnvError("--second needs --hardened", source=str(args.file))
    layout, env, old = _read(args, create=create)
    return _Opened(env, lambda new_env: _write(args.file, layout, new_env, old))


def _read(
    args: argparse.Namespace, *, create: bool = False
) -> tuple[EnvLayout, dict[str, str], bytes | None]:
    """The file's layout, its variables and its raw bytes (None for a file still to create)."""
    source = str(args.file)
    try:
        data = args.file.read_bytes()
    except FileNotFoundError:
        if not create:
            raise BootEnvError("no such file", source=source) from None
        return _new_layout(args), {}, None
    except OSError as exc:
        raise BootEnvError(f"cannot read: {exc.strerror}", source=source) from None
    layout = _existing_layout(args, data)
    return layout, layout.decode(data, source=source), data


def _new_layout(args: argparse.Namespace) -> EnvLayout:
    fmt = args.format or layouts.GRUB
    if fmt == layouts.UBOOT:
        return layouts.uboot(args.size or ubootenv.DEFAULT_SIZE, redundant=args.redundant)
    _reject_uboot_options(args, fmt)
    return layouts.grub() if fmt == layouts.GRUB else layouts.uboot_txt()


def _existing_layout(args: argparse.Namespace, data: bytes) -> EnvLayout:
    source = str(args.file)
    if args.format in (layouts.GRUB, layouts.UBOOT_TXT):
        _reject_uboot_options(args, args.format)
        return layouts.grub() if args.format == layouts.GRUB else layouts.uboot_txt()
    redundant = True if args.redundant else None
    found = layouts.detect_layout(data, size=args.size, redundant=redundant)
    if found is not None and args.format in (None, found.format):
        if found.format != layouts.UBOOT:
            _reject_uboot_options(args, found.format)
        return found
    if args.format == layouts.UBOOT:  # say why the CRC does not match, or that it is truncated
        size = args.size or len(data)
        if size <= ubootenv.REDUNDANT_HEADER:
            raise EnvCorrupt(f"is {len(data)} bytes, too short for a U-Boot env", source=source)
        if len(data) < size:
            layouts.uboot(size).decode(data, source=source)  # raises: truncated
        ubootenv.decode_image(data[:size], redundant=redundant, source=source)  # raises: CRC
    raise EnvCorrupt(layouts.describe_unknown(data, size=args.size), source=source)


def _open_pair(args: argparse.Namespace, *, create: bool) -> _Opened:
    """FILE as the primary of a hardened two-copy store (pvreal.bootenv.store)."""
    primary = args.file
    secondary = args.second or store.redund_path(primary)
    found = (_read_optional(primary), _read_optional(secondary))
    existing = [data for data in found if data is not None]
    if not existing and not create:
        raise BootEnvError(f"no such file, nor its second copy {secondary}", source=str(primary))
    try:
        if existing:
            layout = _pair_layout(args, existing, (primary, secondary))
        else:
            layout = _new_layout(args)
            if layout.format == layouts.UBOOT:
                layout = layouts.uboot(layout.size, redundant=True)
        env_store = store.open_store(primary, layout, store.HARDENED, secondary=secondary)
    except ValueError as exc:  # an impossible layout, e.g. uboot-txt, or a U-Boot env too small
        raise BootEnvError(str(exc), source=str(primary)) from None
    report = env_store.inspect()  # EnvCorrupt when neither copy is valid: nothing is written
    for copy in report.damaged:
        chosen = report.copies[report.chosen].path if report.chosen is not None else "none"
        print(f"pvreal: warning: {copy.path}: {copy.problem}; using {chosen}", file=sys.stderr)

    def save(env: dict[str, str]) -> None:
        try:
            env_store.save(env)
        except OSError as exc:
            raise BootEnvError(
                f"cannot write: {exc.strerror}", source=str(exc.filename or primary)
            ) from None

    return _Opened(report.env, save)


def _pair_layout(
    args: argparse.Namespace, copies: list[bytes], paths: tuple[Path, Path]
) -> EnvLayout:
    """The layout of a two-copy store, from the first copy that is recognisable."""
    for data in copies:
        found = layouts.detect_layout(data, size=args.size)
        if found is not None and args.format in (None, found.format):
            if found.format == layouts.UBOOT:
                return layouts.uboot(found.size, redundant=True)
            _reject_uboot_options(args, found.format)
            return found
    if args.format == layouts.UBOOT:  # let the store say what is wrong with each copy
        return layouts.uboot(args.size or len(copies[0]), redundant=True)
    if args.format == layouts.GRUB:
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


def _reject_uboot_options(args: argparse.Namespace, fmt: str) -> None:
    if args.size is not None or args.redundant:
        raise BootEnvError(
            f"--size and --redundant apply to U-Boot images only, and this is {fmt}",
            source=str(args.file),
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


def _size(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}") from None
    if value <= ubootenv.REDUNDANT_HEADER:
        raise argparse.ArgumentTypeError(f"size {value} is too small for a U-Boot env")
    return value
