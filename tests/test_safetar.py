"""Safe unpacking of package tarballs: what is refused, what is accepted, and that a refused
archive leaves nothing behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvreal import safetar
from pvreal.safetar import BadPackage, Limits

PACKAGE = b'{"#spec":"pantavisor-service-system@1"}'


@dataclass
class Member:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def obj(data: bytes) -> Member:
    return Member(f"objects/{sha(data)}", data)


def make_tar(*members: Member, compress: bool = False, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.type
            info.linkname = member.linkname
            info.size = len(member.data) if member.type == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(member.data) if info.size else None)
    data = buffer.getvalue()
    return gzip.compress(data) if compress else data


def unpack(data: bytes, staging: Path, source: str = "pkg.tgz", limits: Limits = safetar.DEFAULT_LIMITS):
    kind, stream = safetar.sniff(io.BytesIO(data))
    assert kind in ("gzip", "tar")
    return safetar.unpack_package(stream, source=source, kind=kind, staging_parent=staging,
                                  limits=limits)


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    path = tmp_path / "staging"
    path.mkdir()
    return path


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tgz"])
def test_a_good_package_is_read_and_its_objects_staged(staging: Path, compress: bool):
    blobs = [b"root filesystem", b"config"]
    data = make_tar(Member("objects", type=tarfile.DIRTYPE), Member("json", PACKAGE),
                    *map(obj, blobs), compress=compress)
    with unpack(data, staging) as package:
        assert package.json == PACKAGE
        assert {s: p.read_bytes() for s, p in package.objects.items()} == {
            sha(b): b for b in blobs}
    assert list(staging.iterdir()) == []  # the staging folder is gone afterwards


def test_sniff_keeps_every_byte(tmp_path: Path):
    for data, kind in ((gzip.compress(b"x" * 2000), "gzip"),
                       (make_tar(Member("json", PACKAGE)), "tar"),
                       (PACKAGE, "json")):
        found, stream = safetar.sniff(io.BytesIO(data))
        assert found == kind
        assert stream.read() == data


BAD_MEMBERS = {
    "absolute": (Member("/etc/passwd", b"x"), "absolute"),
    "dotdot": (Member("../escape", b"x"), "'..'"),
    "dotdot-in-objects": (Member("objects/../../escape", b"x"), "'..'"),
    "symlink": (Member("objects/" + "a" * 64, type=tarfile.SYMTYPE, linkname="/etc/passwd"),
                "links are not allowed"),
    "relative-symlink": (Member("json", type=tarfile.SYMTYPE, linkname="objects/x"),
                         "links are not allowed"),
    "hardlink": (Member("json", type=tarfile.LNKTYPE, linkname="../../etc/passwd"),
                 "links are not allowed"),
    "char-device": (Member("dev/null", type=tarfile.CHRTYPE), "device"),
    "block-device": (Member("dev/sda", type=tarfile.BLKTYPE), "device"),
    "fifo": (Member("pipe", type=tarfile.FIFOTYPE), "FIFO"),
    "wrong-sha": (Member("objects/" + sha(b"other"), b"content"), "content sha256"),
    "not-a-sha": (Member("objects/rootfs.img", b"content"), "objects/<sha256"),
    "uppercase-sha": (Member("objects/" + sha(b"c").upper(), b"c"), "objects/<sha256"),
    "object-subdir": (Member(f"objects/sub/{sha(b'c')}", b"c"), "objects/<sha256"),
}


@pytest.mark.parametrize("bad", list(BAD_MEMBERS), ids=list(BAD_MEMBERS))
def test_bad_members_are_refused_and_leave_nothing(staging: Path, bad: str):
    member, reason = BAD_MEMBERS[bad]
    good = obj(b"staged before the bad member")
    data = make_tar(Member("json", PACKAGE), good, member, compress=True)
    with pytest.raises(BadPackage) as error, unpack(data, staging, source="/x/evil.tgz"):
        pytest.fail("a bad archive must not be handed out")
    message = str(error.value)
    assert "/x/evil.tgz" in message and repr(member.name) in message
    assert reason in message
    assert list(staging.iterdir()) == []


def test_a_package_without_json_is_refused(staging: Path):
    with pytest.raises(BadPackage, match="no 'json' member"), \
            unpack(make_tar(obj(b"x"), Member("./json", PACKAGE)), staging):
        pass


def test_json_member_name_follows_pvtx(staging: Path):
    # pvtx takes any member whose name is a prefix of "json"; the last one wins.
    data = make_tar(Member("json", b"first"), Member("j", PACKAGE))
    with unpack(data, staging) as package:
        assert package.json == PACKAGE


def test_other_members_are_ignored(staging: Path):
    long_dir = "docs/" + "d" * 150  # needs a GNU long name / pax header
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        data = make_tar(Member(long_dir, type=tarfile.DIRTYPE), Member(long_dir + "/README", b"r"),
                        Member("./json", b"ignored, as pvtx does"), Member("json", PACKAGE),
                        fmt=fmt)
        with unpack(data, staging) as package:
            assert package.json == PACKAGE and package.objects == {}


def test_truncated_archives_are_refused(staging: Path):
    data = make_tar(Member("json", PACKAGE), obj(b"y" * 5000), compress=True)
    for cut in (len(data) // 2, len(data) - 30):
        with pytest.raises(BadPackage, match="pkg.tgz"), unpack(data[:cut], staging):
            pass
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        (Limits(json_bytes=10), "package document larger"),
        (Limits(object_bytes=10), "object larger"),
        (Limits(total_bytes=50), "add up to more"),
        (Limits(members=2), "more than 2 members"),
    ],
)
def test_size_limits(staging: Path, limits: Limits, match: str):
    data = make_tar(Member("json", PACKAGE), obj(b"z" * 100), obj(b"w"))
    with pytest.raises(BadPackage, match=match), unpack(data, staging, limits=limits):
        pass
    assert list(staging.iterdir()) == []


def test_install_object_skips_a_valid_copy_and_replaces_a_corrupt_one(tmp_path: Path):
    objdir = tmp_path / "objects"
    objdir.mkdir()
    content = b"object"
    name = sha(content)
    staged = tmp_path / "staged"
    staged.write_bytes(content)
    assert safetar.install_object(staged, objdir, name) is True
    assert (objdir / name).read_bytes() == content and not staged.exists()
    staged.write_bytes(content)
    assert safetar.install_object(staged, objdir, name) is False
    (objdir / name).write_bytes(b"bit rot")
    assert safetar.install_object(staged, objdir, name) is True
    assert (objdir / name).read_bytes() == content
