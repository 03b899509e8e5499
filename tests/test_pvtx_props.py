"""Properties of pvtx transactions: bad input never changes the transaction, and the merge
rules behave like a merge (idempotent, package values win, canonical output).

Each failing `add` / `queue unpack` is followed by a byte-for-byte comparison of the transaction
folder, the objects directory and the queue. Example counts are small so this runs in seconds.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pvreal.tx import TxFolder
from shared.canonical import is_canonical
from shared.errors import PvError
from shared.transaction import apply_package, dump_state, empty_state, parse_document

SPEC = "pantavisor-service-system@1"
SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def tree_digest(root: Path) -> list[tuple[str, int, str]]:
    """Every path under root with its mode and content hash (or link target)."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(folder, name)
            info = path.lstat()
            if path.is_symlink():
                content = "link:" + os.readlink(path)
            elif path.is_file():
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = "dir"
            found.append((str(path.relative_to(root)), info.st_mode, content))
    return sorted(found)


class Scratch:
    """A queue-backed local transaction holding initial_state plus watchdog_pinger's objects."""

    def __init__(self, root: Path, data: Path):
        self.root = root
        self.inputs = root / "inputs"
        self.inputs.mkdir()
        self.objects = root / "objects"
        self.objects.mkdir()
        self.queue = root / "queue"
        self.folder = TxFolder(root / "pvtxdir")
        self.folder.queue_new(str(self.queue), str(self.objects))
        self.folder.queue_remove("nothing")
        self.folder.begin(str(data / "resources" / "initial_state.json"))
        self.folder.add(str(data / "resources" / "watchdog_pinger.tar"))
        self.counter = 0

    def snapshot(self):
        return [tree_digest(p) for p in (self.folder.path, self.objects, self.queue)]

    def write(self, data: bytes) -> str:
        self.counter += 1
        path = self.inputs / f"input-{self.counter}"
        path.write_bytes(data)
        return str(path)

    def assert_refused(self, data: bytes) -> None:
        """Both ways a package enters fail and leave every folder as it was."""
        before = self.snapshot()
        path = self.write(data)
        with pytest.raises(PvError):
            self.folder.add(path)
        assert self.snapshot() == before
        with pytest.raises(PvError):
            self.folder.queue_unpack(path)
        assert self.snapshot() == before


@contextmanager
def scratch(conformance_dir: Path) -> Iterator[Scratch]:
    with tempfile.TemporaryDirectory(prefix="pvtx-props-") as root:
        yield Scratch(Path(root), conformance_dir)


# --------------------------------------------------------------------------------------------
# strategies

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_. ", min_size=1, max_size=12)
clean_names = names.filter(lambda n: n not in (".", ".."))
shas = st.binary(max_size=32).map(lambda b: hashlib.sha256(b).hexdigest())
json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8,
)

bad_keys = st.one_of(
    st.sampled_from(["../x", "/abs", "a//b", "", ".", "..", "a/./b", "a/", "x/../../y"]),
    st.builds(lambda a, b: f"{a}/../{b}", clean_names, clean_names),
    st.builds(lambda a: "/" + a, clean_names),
    st.builds(lambda a, b: f"{a}//{b}", clean_names, clean_names),
    st.builds(lambda a: f"../{a}", clean_names),
)


def package_bytes(entries: dict) -> bytes:
    return json.dumps({"#spec": SPEC, **entries}).encode()


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes]], compress: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in members:
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(data) if info.size else None)
    raw = buffer.getvalue()
    return gzip.compress(raw) if compress else raw


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, b""


GOOD_PACKAGE = package_bytes({"extra/run.json.bak": "0" * 64})


@st.composite
def bad_tarballs(draw) -> bytes:
    blob = draw(st.binary(min_size=1, max_size=64))
    good_object = regular("objects/" + hashlib.sha256(blob).hexdigest(), blob)
    bad_member = draw(st.one_of(
        # an object whose content does not match its name
        st.builds(lambda data, other: regular("objects/" + hashlib.sha256(other).hexdigest(),
                                              data),
                  st.binary(max_size=64), st.binary(max_size=64)).filter(
            lambda m: hashlib.sha256(m[1]).hexdigest() != m[0].name[8:]),
        # path traversal and absolute names
        st.builds(lambda n: regular(f"../{n}", b"x"), clean_names),
        st.builds(lambda n: regular(f"objects/../{n}", b"x"), clean_names),
        st.builds(lambda n: regular(f"/{n}", b"x"), clean_names),
        # links and special files, wherever they point
        st.builds(lambda n, t: special(n, tarfile.SYMTYPE, t), st.sampled_from(
            ["json", "objects/" + "a" * 64, "x"]), st.sampled_from(["/etc/passwd", "../..", "x"])),
        st.builds(lambda n: special(n, tarfile.LNKTYPE, "json"), st.sampled_from(["json", "l"])),
        st.builds(lambda n, k: special(n, k), clean_names,
                  st.sampled_from([tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])),
        # a package document that is not one
        st.builds(lambda t: regular("json", t), st.binary(max_size=40)),
    ))
    # The good document comes first: a later `json` member replaces an earlier one (as in pvtx).
    rest = [good_object, bad_member]
    if draw(st.booleans()):
        rest.reverse()
    return tar_bytes([regular("json", GOOD_PACKAGE), *rest], compress=draw(st.booleans()))


# --------------------------------------------------------------------------------------------
# bad input never changes the transaction


def test_malformed_json_changes_nothing(conformance_dir: Path):
    valid = (conformance_dir / "resources" / "state-1.json").read_bytes()
    texts = st.one_of(
        st.text(max_size=60).map(str.encode),
        st.binary(max_size=60),
        st.integers(1, len(valid) - 1).map(lambda n: valid[:n]),  # truncated
    )
    with scratch(conformance_dir) as sc:

        @SETTINGS
        @given(texts)
        def check(data: bytes) -> None:
            try:
                parse_document(data, source="probe")
            except PvError:
                pass
            else:
                assume(False)  # happened to be a valid document
            sc.assert_refused(data)

        check()


def test_non_object_roots_change_nothing(conformance_dir: Path):
    with scratch(conformance_dir) as sc:

        @SETTINGS
        @given(json_values.filter(lambda v: not isinstance(v, dict)))
        def check(value) -> None:
            sc.assert_refused(json.dumps(value).encode())

        check()


def test_path_traversal_keys_change_nothing(conformance_dir: Path):
    with scratch(conformance_dir) as sc:

        @SETTINGS
        @given(bad_keys, shas, st.booleans())
        def check(key: str, sha: str, as_tar: bool) -> None:
            document = package_bytes({"zz/ok.txt": sha, key: sha})
            if as_tar:
                document = tar_bytes([regular("json", document)], compress=True)
            sc.assert_refused(document)

        check()


def test_bad_values_and_signatures_change_nothing(conformance_dir: Path):
    bad_entries = st.one_of(
        st.builds(lambda v: {"app/root.squashfs": v},
                  st.text(max_size=70).filter(lambda t: len(t) != 64)),
        st.builds(lambda v: {"app/lxc.container.conf": v.upper()}, shas),
        st.builds(lambda p: {"_sigs/x.json": {"#spec": "pvs@2", "protected": p}},
                  st.sampled_from(["", "!!!!", "bm90IGpzb24", "WzEsMl0"])),
        st.just({"_sigs/x.json": "not an object"}),
    )
    with scratch(conformance_dir) as sc:

        @SETTINGS
        @given(bad_entries)
        def check(entries: dict) -> None:
            sc.assert_refused(package_bytes(entries))

        check()


def test_bad_tarballs_change_nothing(conformance_dir: Path):
    with scratch(conformance_dir) as sc:

        @SETTINGS
        @given(bad_tarballs())
        def check(data: bytes) -> None:
            sc.assert_refused(data)

        check()


def test_a_good_input_does_change_the_transaction(conformance_dir: Path):
    """The refusal checks above are only meaningful if a good package is accepted."""
    with scratch(conformance_dir) as sc:
        before = sc.snapshot()
        blob = b"new object"
        good = tar_bytes([regular("json", GOOD_PACKAGE),
                          regular("objects/" + hashlib.sha256(blob).hexdigest(), blob)], True)
        sc.folder.add(sc.write(good))
        after = sc.snapshot()
        assert after[0] != before[0] and after[1] != before[1]


# --------------------------------------------------------------------------------------------
# the merge rules

plain_keys = st.lists(clean_names, min_size=1, max_size=3).map("/".join).filter(
    lambda k: not k.startswith("_sigs/"))
plain_packages = st.dictionaries(plain_keys, shas, max_size=6).map(
    lambda d: {"#spec": SPEC, **d})


@settings(max_examples=60, deadline=None)
@given(plain_packages, plain_packages)
def test_add_is_idempotent_and_the_package_wins(base: dict, package: dict):
    state = apply_package(empty_state(), base)[0]
    once = apply_package(state, package)[0]
    assert apply_package(once, package)[0] == once
    for key, value in package.items():
        if key != "#spec":
            assert once[key] == value
    assert set(once) >= set(package)
    assert is_canonical(dump_state(once))
