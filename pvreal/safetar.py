"""Safe unpacking of pvtx package tarballs (`json` + `objects/<sha256>`).

A package tarball is read as a stream (it may arrive on stdin) and nothing outside a private
staging folder is written while reading it:

* member names must be relative and free of `..`; links (symbolic or hard) and device nodes or
  FIFOs are refused outright (pvtx packages never need them);
* `json` is the package document (pvtx's test is "the name is a prefix of `json`", so a later
  `json` member replaces an earlier one); members under `objects/` must be named by the lowercase
  sha256 of their content, which is checked while streaming each one into a temporary file;
* every other regular file and every directory is ignored, as pvtx does (`./json` included);
* sizes are bounded (`Limits`).

Only after the whole archive has been read does the caller install the staged objects
(`install_object`) and change its state; a bad archive raises `BadPackage` naming the tarball and
the member and leaves only the staging folder, which `unpack_package` removes.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from pvreal.durable import fsync_dir  # noqa: F401  (callers fsync objdir after install_object)
from pvreal.objectstore import sha256_file
from shared.errors import PvError
from shared.state import is_sha256

OBJECTS_PREFIX = "objects/"
PACKAGE_MEMBER = "json"
_CHUNK = 1 << 20
_SNIFF_BYTES = 512

Kind = Literal["gzip", "tar", "json"]


class BadPackage(PvError):
    """A package (tarball or JSON) that is unreadable, unsafe or inconsistent."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds for one package; generous for real revisions, small enough to stop a bomb."""

    json_bytes: int = 64 << 20
    object_bytes: int = 16 << 30
    total_bytes: int = 64 << 30
    members: int = 100_000


DEFAULT_LIMITS = Limits()


@dataclass(slots=True)
class Package:
    """What a tarball held: the package document's bytes and the staged, verified objects."""

    source: str
    json: bytes | None = None
    objects: dict[str, Path] = field(default_factory=dict)  # sha256 -> staged file


# --------------------------------------------------------------------------------------------
# input type


class _Prefixed(io.RawIOBase):
    """A read-only stream that replays `head` and then continues with `rest` (for sniffing)."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def sniff(stream: BinaryIO) -> tuple[Kind, BinaryIO]:
    """The input type, as pvtx decides it (gzip magic, else `ustar` at 257, else JSON), and a
    stream that still starts at the first byte."""
    head = b""
    while len(head) < _SNIFF_BYTES:
        chunk = stream.read(_SNIFF_BYTES - len(head))
        if not chunk:
            break
        head += chunk
    kind: Kind = "json"
    if head[:2] == b"\x1f\x8b":
        kind = "gzip"
    elif head[257:262] == b"ustar":
        kind = "tar"
    return kind, io.BufferedReader(_Prefixed(head, stream), _CHUNK)


def read_limited(stream: BinaryIO, limit: int, *, source: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise BadPackage(f"larger than the {limit}-byte limit for a package document",
                         source=source)
    return data


# --------------------------------------------------------------------------------------------
# member checks


def _member_label(source: str, name: str) -> str:
    return f"{source} member {name!r}"


def check_member(member: tarfile.TarInfo, *, source: str) -> None:
    """Refuse names that could escape and member types a package never needs."""
    name = member.name
    where = _member_label(source, name)
    if name.startswith("/"):
        raise BadPackage("absolute member path", source=where)
    if ".." in name.split("/"):
        raise BadPackage("member path contains '..'", source=where)
    if member.issym() or member.islnk():
        raise BadPackage(f"links are not allowed (points to {member.linkname!r})", source=where)
    if member.isdev():
        raise BadPackage("device nodes and FIFOs are not allowed", source=where)
    if not (member.isreg() or member.isdir()):
        raise BadPackage(f"unsupported member type {member.type!r}", source=where)


def is_package_member(name: str) -> bool:
    # pvtx tests whether the name is a prefix of "json" (so "j" counts too); matched on purpose.
    return PACKAGE_MEMBER.startswith(name)


# --------------------------------------------------------------------------------------------
# unpacking


@contextlib.contextmanager
def unpack_package(
    stream: BinaryIO,
    *,
    source: str,
    kind: Kind,
    staging_parent: Path,
    limits: Limits = DEFAULT_LIMITS,
) -> Iterator[Package]:
    """Read a whole package tarball; objects are staged under a temporary folder in
    `staging_parent` (choose one on the objects directory's file system) that is removed on exit.
    """
    staging = Path(tempfile.mkdtemp(prefix=".pvtx-unpack-", dir=staging_parent))
    try:
        yield _read_tar(stream, source=source, kind=kind, staging=staging, limits=limits)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_tar(stream: BinaryIO, *, source: str, kind: Kind, staging: Path,
              limits: Limits) -> Package:
    package = Package(source=source)
    mode: Literal["r|gz", "r|"] = "r|gz" if kind == "gzip" else "r|"
    current = "(archive header)"
    total = members = 0
    try:
        with tarfile.open(fileobj=stream, mode=mode) as archive:
            for member in archive:
                current = member.name
                members += 1
                if members > limits.members:
                    raise BadPackage(f"more than {limits.members} members", source=source)
                check_member(member, source=source)
                if not member.isreg():
                    continue
                total += member.size
                if total > limits.total_bytes:
                    raise BadPackage(f"members add up to more than {limits.total_bytes} bytes",
                                     source=_member_label(source, member.name))
                if is_package_member(member.name):
                    package.json = _read_json_member(archive, member, source, limits)
                elif member.name.startswith(OBJECTS_PREFIX):
                    sha = _stage_object(archive, member, source, staging, limits)
                    package.objects[sha] = staging / sha
    except BadPackage:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BadPackage(f"not a readable tar archive ({exc}), at {current!r}",
                         source=source) from None
    if package.json is None:
        raise BadPackage(f"no {PACKAGE_MEMBER!r} member (the package document)", source=source)
    return package


def _read_json_member(archive: tarfile.TarFile, member: tarfile.TarInfo, source: str,
                      limits: Limits) -> bytes:
    if member.size > limits.json_bytes:
        raise BadPackage(f"package document larger than {limits.json_bytes} bytes",
                         source=_member_label(source, member.name))
    data = archive.extractfile(member).read()  # type: ignore[union-attr]
    if len(data) != member.size:
        raise BadPackage("truncated member", source=_member_label(source, member.name))
    return data


def _stage_object(archive: tarfile.TarFile, member: tarfile.TarInfo, source: str,
                  staging: Path, limits: Limits) -> str:
    where = _member_label(source, member.name)
    sha = member.name[len(OBJECTS_PREFIX):]
    if not is_sha256(sha):
        raise BadPackage("an object member must be named objects/<sha256 of its content>",
                         source=where)
    if member.size > limits.object_bytes:
        raise BadPackage(f"object larger than {limits.object_bytes} bytes", source=where)
    reader = archive.extractfile(member)
    assert reader is not None  # a regular member always has a reader
    partial = staging / (sha + ".part")
    digest = hashlib.sha256()
    size = 0
    with open(partial, "wb") as out:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if size != member.size:
        raise BadPackage("truncated member", source=where)
    if digest.hexdigest() != sha:
        raise BadPackage(f"content sha256 is {digest.hexdigest()}, not the name", source=where)
    os.replace(partial, staging / sha)
    return sha


# --------------------------------------------------------------------------------------------
# objects


def has_valid_object(objdir: Path, sha: str) -> bool:
    """pvtx skips an object whose file already exists and hashes to its name."""
    target = objdir / sha
    return target.is_file() and sha256_file(target) == sha


def install_object(staged: Path, objdir: Path, sha: str) -> bool:
    """Move a verified object into `objdir` (rename; copy + rename across file systems).

    Returns False when a valid copy was already there. The caller fsyncs `objdir` afterwards.
    """
    if has_valid_object(objdir, sha):
        return False
    target = objdir / sha
    try:
        os.replace(staged, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # staging is on another file system
            raise
        temp = objdir / (sha + ".tmp")
        shutil.copyfile(staged, temp)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
    return True
