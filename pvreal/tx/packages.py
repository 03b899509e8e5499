"""What enters a transaction: a package read from a file or stdin (JSON, tar or tar.gz), checked
before anything changes, and its objects installed into an objects directory."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pvreal import safetar
from pvreal.durable import fsync_dir
from pvreal.tx.errors import TxError
from shared.transaction import State, parse_document

STDIN_ARG = "-"


@contextlib.contextmanager
def _open_input(arg: str) -> Iterator[tuple[BinaryIO, str]]:
    if arg == STDIN_ARG:
        yield sys.stdin.buffer, "<stdin>"
        return
    try:
        handle = open(arg, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise TxError(f"cannot open the package: {exc.strerror}", source=arg) from None
    with handle:
        yield handle, arg


@dataclass(frozen=True, slots=True)
class LoadedPackage:
    source: str
    document: State
    raw: bytes
    objects: Mapping[str, Path]  # sha -> staged file


@contextlib.contextmanager
def read_package(arg: str, staging_parent: Path,
                 limits: safetar.Limits = safetar.DEFAULT_LIMITS) -> Iterator[LoadedPackage]:
    """A JSON package or a tar/tar.gz package (`-` = stdin), checked; staged objects are removed
    when the block ends (install them inside it)."""
    with _open_input(arg) as (stream, source):
        kind, stream = safetar.sniff(stream)
        if kind == "json":
            raw = safetar.read_limited(stream, limits.json_bytes, source=source)
            yield LoadedPackage(source, parse_document(raw, source=source), raw, {})
            return
        with safetar.unpack_package(stream, source=source, kind=kind,
                                    staging_parent=staging_parent, limits=limits) as package:
            label = f"{source} member {safetar.PACKAGE_MEMBER!r}"
            assert package.json is not None  # unpack_package insists on it
            document = parse_document(package.json, source=label)
            yield LoadedPackage(label, document, package.json, package.objects)


def install_objects(objects: Mapping[str, Path], objdir: Path) -> None:
    """Move verified objects into `objdir` (in sha order) and make their names durable."""
    if not objects:
        return
    for sha, path in sorted(objects.items()):
        safetar.install_object(path, objdir, sha)
    fsync_dir(objdir)
