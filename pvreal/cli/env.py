"""`pvreal env list|get|set|unset FILE`: read and edit GRUB and U-Boot boot environment files.

The command `env` fronts pvreal/bootenv/ (boot environments; `env` is what users type). The
format is detected from the content unless `--format` is given. A corrupt or truncated file is
reported (exit 1, naming the file and the problem) and never rewritten. With `--hardened`, FILE
is the primary of a hardened two-copy store: a damaged copy is reported as a warning and the other
one used; a write goes through the store (and so repairs the damaged copy). Reading and writing
are pvreal.bootenv.envfile's. `list` of a two-copy env (a hardened pair, or a U-Boot redundant
image with its partner beside it) first says which copy is current.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pvreal.bootenv import layout as layouts
from pvreal.bootenv import ubootenv
from pvreal.bootenv.envfile import EnvFile, Opened, open_env
from pvreal.bootenv.errors import BootEnvError, InvalidEntry
from shared.canonical import dumps


def register(subparsers: argparse._SubParsersAction) -> None:
    env = subparsers.add_parser(
        "env",
        help="list, get, set and unset variables in GRUB and U-Boot boot env files",
        description=(
            "Boot environment files: GRUB's grubenv (1024-byte block), U-Boot env images "
            "(CRC32, single or redundant layout) and Pantavisor's uboot.txt. "
            "(The library is pvreal/bootenv/.)"
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
    """KEY=VALUE lines; for a two-copy env, first one `# copy N PATH (current|stale|...)` line per
    copy (JSON: {"copies": [...], "env": {...}})."""
    opened = _open(args)
    env = opened.env
    if args.json:
        if opened.copies:
            print(dumps({"copies": [c.as_json() for c in opened.copies], "env": env}))
        else:
            print(dumps(env))
        return 0
    for number, copy in enumerate(opened.copies, 1):
        print("# " + copy.describe(number))
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


def _size(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}") from None
    if value <= ubootenv.REDUNDANT_HEADER:
        raise argparse.ArgumentTypeError(f"size {value} is too small for a U-Boot env")
    return value


def _open(args: argparse.Namespace, *, create: bool = False) -> Opened:
    where = EnvFile(args.file, args.format, args.size, args.redundant, args.hardened, args.second)
    opened = open_env(where, create=create)
    for warning in opened.warnings:
        print(f"pvreal: warning: {warning}", file=sys.stderr)
    return opened
