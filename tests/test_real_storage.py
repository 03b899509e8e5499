"""pvreal.storage: the /storage tree's file logic, on pyfakefs (no root, no real disk)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from pvreal.objectstore import ObjectError, ObjectHashMismatch, ObjectStore
from pvreal.storage import Storage, check_revision_name
from shared import canonical
from shared.errors import InvalidState

ROOT = Path("/storage")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


KERNEL, ROOTFS, BIND, CONF = b"kernel-bytes", b"squashfs-bytes", b"bind-file", b"lxc conf"


def make_state(extra: dict | None = None) -> dict:
    state = {
        "#spec": "pantavisor-service-system@1",
        "bsp/kernel.img": sha(KERNEL),
        "bsp/pantavisor": sha(KERNEL),  # same content twice: one object, two installs
        "bsp/run.json": {"addons": [], "initrd": "pantavisor", "linux": "kernel.img"},
        "bsp/src.json": {"#spec": "bsp-manifest-src@1"},
        "app/root.squashfs": sha(ROOTFS),
        "app/lxc.container.conf": sha(CONF),
        "app/run.json": {"#spec": "service-manifest-run@1", "name": "app"},
        "app/src.json": {"#spec": "service-manifest-src@1"},
        "_config/app/etc/x.bind": sha(BIND),
        "_sigs/app.json": {"#spec": "pvs@2", "protected": "e30", "signature": ""},
    }
    state.update(extra or {})
    return state


def _plain_atomic_write(path, data: bytes, *, mode=None) -> None:
    """pyfakefs has no os.pwrite, which pvreal.durable uses: same contract, plain calls."""
    tmp = Path(f"{path}.fake-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.fixture(params=["pyfakefs", "disk"])
def storage(request, monkeypatch, tmp_path) -> Storage:
    """The same tests on pyfakefs and, with the real durable writes, on a real folder."""
    global ROOT
    if request.param == "pyfakefs":
        request.getfixturevalue("fs")
        monkeypatch.setattr("pvreal.storage.atomic_write", _plain_atomic_write)
        monkeypatch.setattr("pvreal.storage.fsync_dir", lambda _p: None)
        monkeypatch.setattr(f"{__name__}.ROOT", Path("/storage"))
    else:
        monkeypatch.setattr(f"{__name__}.ROOT", tmp_path / "storage")
    s = Storage(ROOT, statfs=lambda _p: (1000, 300))
    s.init_layout()
    for data in (KERNEL, ROOTFS, BIND, CONF):
        s.objects.put_bytes(sha(data), data)
    return s


# ---- objects


def test_put_rehashes_and_renames_into_place(storage: Storage):
    data = b"new object"
    assert storage.objects.put_stream(sha(data), io.BytesIO(data)) is True
    assert (ROOT / "objects" / sha(data)).read_bytes() == data
    assert not (ROOT / "objects" / f"{sha(data)}.tmp").exists()


def test_put_with_wrong_bytes_deletes_temp_and_names_the_object(storage: Storage):
    wanted = sha(b"expected")
    with pytest.raises(ObjectHashMismatch) as err:
        storage.objects.put_bytes(wanted, b"something else")
    assert wanted in str(err.value)
    assert sha(b"something else") in str(err.value)
    assert not (ROOT / "objects" / wanted).exists()
    assert not (ROOT / "objects" / f"{wanted}.tmp").exists()


def test_put_of_existing_valid_object_is_a_noop(storage: Storage):
    path = ROOT / "objects" / sha(KERNEL)
    inode = path.stat().st_ino
    assert storage.objects.put_stream(sha(KERNEL), io.BytesIO(b"never read")) is False
    assert path.stat().st_ino == inode and path.read_bytes() == KERNEL


def test_put_replaces_a_corrupt_existing_object(storage: Storage):
    path = ROOT / "objects" / sha(KERNEL)
    path.write_bytes(b"bit rot")
    assert storage.objects.put_bytes(sha(KERNEL), KERNEL) is True
    assert path.read_bytes() == KERNEL


def test_commit_tmp_of_a_download(storage: Storage):
    data = b"downloaded"
    storage.objects.tmp_path(sha(data)).write_bytes(data)
    storage.objects.commit_tmp(sha(data))
    assert storage.objects.is_valid(sha(data))


def test_object_names_must_be_sha256(storage: Storage):
    with pytest.raises(ObjectError):
        storage.objects.path("../../etc/passwd")


# ---- trails


def test_write_state_is_canonical_with_pvr_config(storage: Storage):
    state = make_state()
    storage.write_state("1", state)
    text = (ROOT / "trails/1/.pvr/json").read_bytes()
    assert canonical.is_canonical(text) and canonical.loads(text) == state
    config = canonical.loads((ROOT / "trails/1/.pvr/config").read_bytes())
    assert config == {"ObjectsDir": str(ROOT / "objects")}
    assert storage.revisions() == ["1"]


def test_link_trail_hard_links_copies_bind_and_writes_jsons(storage: Storage):
    state = make_state()
    storage.write_state("1", state)
    storage.link_trail("1", state)
    trail = ROOT / "trails/1"
    obj = ROOT / "objects" / sha(ROOTFS)
    assert os.path.samestat((trail / "app/root.squashfs").stat(), obj.stat())
    bind = trail / "_config/app/etc/x.bind"
    assert bind.read_bytes() == BIND
    assert not os.path.samestat(bind.stat(), (ROOT / "objects" / sha(BIND)).stat())
    assert canonical.loads((trail / "app/run.json").read_bytes()) == state["app/run.json"]
    assert not (trail / "app/src.json").exists()  # provenance is not stored
    assert not (trail / "bsp/src.json").exists()
    assert not (trail / "_sigs/app.json").exists()
    kernel = ROOT / "objects" / sha(KERNEL)
    assert os.path.samestat((trail / ".pv/pv-kernel.img").stat(), kernel.stat())
    assert os.path.samestat((trail / ".pv/pv-initrd.img").stat(), kernel.stat())
    assert storage.check().ok


def test_link_trail_keeps_existing_json_files(storage: Storage):
    state = make_state()
    storage.write_state("1", state)
    (ROOT / "trails/1/app").mkdir(parents=True)
    (ROOT / "trails/1/app/run.json").write_text('{"edited":true}')
    storage.link_trail("1", state)
    assert (ROOT / "trails/1/app/run.json").read_text() == '{"edited":true}'


def test_link_trail_with_missing_object_names_it_and_writes_nothing(storage: Storage):
    missing = sha(b"not in the pool")
    state = make_state({"app/extra.bin": missing})
    with pytest.raises(ObjectError) as err:
        storage.link_trail("2", state)
    assert missing in str(err.value)
    assert not (ROOT / "trails/2").exists()


def test_progress_done_and_current(storage: Storage):
    storage.write_state("locals/dev", make_state())
    record = {"status": "INPROGRESS", "status-msg": "Update is being installed", "progress": 40}
    storage.write_progress("locals/dev", record)
    assert storage.read_progress("locals/dev") == record
    assert storage.read_progress("9") is None
    assert not storage.is_done("locals/dev")
    storage.mark_done("locals/dev")
    assert storage.is_done("locals/dev")
    assert (ROOT / "trails/locals/dev/.pv/done").read_bytes() == b""
    storage.set_current("locals/dev")
    assert os.readlink(ROOT / "trails/current") == "locals/dev"
    assert os.readlink(ROOT / "logs/current") == "locals/dev"
    assert storage.revisions() == ["locals/dev"]


@pytest.mark.parametrize(
    "bad", ["../x", "locals/../../x", "current", "a/b", "", "locals/" + "x" * 64]
)
def test_unsafe_revision_names_are_refused(bad: str):
    with pytest.raises(InvalidState):
        check_revision_name(bad)


def test_unsafe_state_keys_are_refused(storage: Storage):
    with pytest.raises(InvalidState):
        storage.write_state("1", {"../escape": sha(KERNEL)})
    assert not (ROOT / "trails/1/.pvr/json").exists()


# ---- volumes and logs


def test_volume_dirs_follow_persistence(storage: Storage):
    assert storage.volume_dir("app", "data", "permanent", "3") == ROOT / "disks/perm/app/data"
    assert storage.volume_dir("app", "data", "revision", "3") == ROOT / "disks/rev/3/app/data"
    assert storage.volume_dir("app", "data", "boot", "3") is None
    assert storage.log_dir("3", "app") == ROOT / "logs/3/app"


# ---- space and GC


def test_space_reserves_five_percent():
    s = Storage(ROOT, statfs=lambda _p: (1_000_000, 120_000))
    space = s.space()
    assert (space.total, space.free, space.reserved, space.real_free) == (
        1_000_000,
        120_000,
        50_000,
        70_000,
    )
    assert Storage(ROOT, statfs=lambda _p: (1000, 10)).space().real_free == 0


def test_gc_removes_revisions_then_unreferenced_objects(storage: Storage):
    keep_state = make_state()
    old_only = b"only the old revision has me"
    inflight = b"downloaded for the update in flight"
    storage.objects.put_bytes(sha(old_only), old_only)
    storage.objects.put_bytes(sha(inflight), inflight)
    old_state = make_state({"app/old.bin": sha(old_only)})
    for rev, state in (("1", old_state), ("2", keep_state)):
        storage.write_state(rev, state)
        storage.link_trail(rev, state)
        storage.log_dir(rev, "app").mkdir(parents=True)
        storage.volume_dir("app", "v", "revision", rev).mkdir(parents=True)
    result = storage.run_gc(storage.plan_gc({"2"}, {sha(inflight)}))
    assert result.removed_revisions == ("1",)
    assert result.removed_objects == (sha(old_only),)
    assert result.reclaimed == len(old_only)
    assert storage.revisions() == ["2"]
    assert not (ROOT / "logs/1").exists() and not (ROOT / "disks/rev/1").exists()
    assert (ROOT / "logs/2/app").is_dir() and (ROOT / "disks/rev/2/app/v").is_dir()
    assert storage.objects.has(sha(inflight)) and storage.objects.has(sha(ROOTFS))
    assert storage.check().ok


# ---- consistency check


def test_check_finds_corruption_partials_and_broken_trails(storage: Storage):
    state = make_state()
    storage.write_state("1", state)
    storage.link_trail("1", state)
    (ROOT / "objects" / sha(CONF)).write_bytes(b"flipped")  # also changes the trail's hard link
    storage.objects.tmp_path(sha(b"half")).write_bytes(b"ha")
    (ROOT / "trails/1/app/root.squashfs").unlink()
    (ROOT / "trails/1/app/root.squashfs").write_bytes(ROOTFS)  # a copy, not a link
    (ROOT / "trails/1/app/run.json").write_text("{}")
    report = storage.check()
    assert not report.ok
    assert report.corrupt_objects == [sha(CONF)]
    assert report.partial_objects == [f"{sha(b'half')}.tmp"]
    assert "1:app/root.squashfs: not a hard link to its object" in report.trail_problems
    assert "1:app/run.json: differs from the state JSON" in report.trail_problems
    assert storage.objects.discard_partials() == [f"{sha(b'half')}.tmp"]


def test_object_store_add_file_and_adopt(tmp_path: Path):
    store = ObjectStore(tmp_path / "objects")
    src = tmp_path / "blob"
    src.write_bytes(b"blob")
    assert store.add_file(src) == sha(b"blob") and src.exists()
    again = tmp_path / "again"
    again.write_bytes(b"blob")
    assert store.adopt_file(again) == sha(b"blob") and not again.exists()
    assert store.names() == [sha(b"blob")]


def test_check_of_named_revisions_rehashes_only_their_objects(storage: Storage):
    """A boot checks the revision it boots; another revision's corrupt object is not its concern."""
    other = b"only revision 2 has me"
    storage.objects.put_bytes(sha(other), other)
    for rev, state in (("1", make_state()), ("2", make_state({"app/extra.bin": sha(other)}))):
        storage.write_state(rev, state)
        storage.link_trail(rev, state)
    (ROOT / "objects" / sha(other)).write_bytes(b"flipped")
    assert storage.check(["1"]).ok
    assert storage.check(["2"]).corrupt_objects == [sha(other)]
    assert storage.check().corrupt_objects == [sha(other)]


def test_removing_a_revision_while_pv_ctrl_stores_its_state_never_fails(tmp_path: Path):
    """pv-ctrl stores a state on its worker while the engine may delete that revision (a failed
    upload): the delete moves the trail aside first, so it never fails half-way with "Directory
    not empty" (which used to send the daemon into recovery reboots), and leaves no half trail."""
    import contextlib
    import threading

    real = Storage(tmp_path / "s")
    real.init_layout()
    state = {"#spec": "pantavisor-service-system@1", "a/run.json": {"name": "a"}}
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            # the trail may go between mkdir and write: pv-ctrl answers that with a 4xx
            with contextlib.suppress(FileNotFoundError):
                real.write_state("locals/x", state)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(300):
            real.remove_revision("locals/x")  # must never raise
    finally:
        stop.set()
        thread.join()
    real.remove_revision("locals/x")
    assert real.revisions() == []
    assert not (tmp_path / "s" / ".trash").exists()  # the tree is as before the deletes
