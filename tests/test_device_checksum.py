"""Boot-time object validation (pantavisor.md §2.2 `pv_state_validate_checksum`, §3.5 RUN step 3).

At boot every object of the booted revision's trail must be the same inode as objects/<sha> and
re-hash to <sha>, and every JSON file must equal its state value; otherwise the revision fails
with ERROR `Object validation went wrong` (and a try-boot rolls back). PV_SECUREBOOT_CHECKSUM=0
skips it, and so does `pv_quickboot` in the daemon's environment (state.c
`pv_state_validate_checksum` tests `getenv("pv_quickboot")`; the kernel puts a cmdline
`pv_quickboot=1` there, as Pantavisor's generic U-Boot script always does). The rule's pieces are
checked on plain files first (no root), then on the device.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
from devicekit import Daemon, Revisions, need_device

from pvreal.cli import main as pvreal_main
from pvreal.device.secureboot import invalid_objects, valid_pool
from pvreal.storage import Storage
from shared.engine.config import Config

OBJECT_VALIDATION = "Object validation went wrong"


# ------------------------------------------------------------------ the check (no root)


@pytest.fixture
def trail(tmp_path):
    """Revision 1: two objects, a run.json, and a dm-verity container whose data device is
    checked lazily by the kernel, not at boot."""
    storage = Storage(tmp_path / "storage")
    storage.init_layout()
    kernel = storage.objects.add_bytes(b"kernel bytes\n")
    rootfs = storage.objects.add_bytes(b"rootfs bytes\n")
    verity = storage.objects.add_bytes(b"verity data device\n")
    state = {
        "#spec": "pantavisor-service-system@1",
        "bsp/kernel.img": kernel,
        "bsp/run.json": {"linux": "kernel.img", "initrd": "", "addons": []},
        "app/root.squashfs": rootfs,
        "app/run.json": {"name": "app", "root-volume": "root.squashfs"},
        "sec/root.squashfs": verity,
        "sec/_dm/root.squashfs.json": {"type": "dm-verity", "data_device": "root.squashfs"},
    }
    storage.write_state("1", state)
    storage.link_trail("1", state)
    return storage, {"kernel": kernel, "rootfs": rootfs, "verity": verity}


def _corrupt(path: Path) -> None:
    """Change the bytes in place: same inode, other content."""
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))


def test_an_intact_trail_is_valid(trail):
    storage, _ = trail
    assert invalid_objects(storage, "1") == frozenset()
    assert valid_pool(storage, "1", Config()) == frozenset(storage.objects.names())


def test_a_corrupt_object_is_withheld_unless_checksums_are_off(trail):
    storage, sha = trail
    _corrupt(storage.objects.path(sha["rootfs"]))
    assert invalid_objects(storage, "1") == {sha["rootfs"]}
    assert sha["rootfs"] not in valid_pool(storage, "1", Config())
    off = Config.from_mapping({"PV_SECUREBOOT_CHECKSUM": "0"})
    assert valid_pool(storage, "1", off) == frozenset(storage.objects.names())
    quick = replace(Config(), quickboot=True)
    assert valid_pool(storage, "1", quick) == frozenset(storage.objects.names())


def test_the_boot_checksum_pass_needs_the_key_on_and_no_quickboot():
    """state.c `pv_state_validate_checksum`: `getenv("pv_quickboot") || !PV_SECUREBOOT_CHECKSUM`
    skips the pass."""
    for checksum, quickboot, expected in [
        (True, False, True), (True, True, False), (False, False, False), (False, True, False)
    ]:
        config = replace(Config(secureboot_checksum=checksum), quickboot=quickboot)
        assert config.boot_checksum is expected, (checksum, quickboot)


def test_a_trail_file_that_is_another_inode_fails(trail):
    storage, sha = trail
    dest = storage.trail_dir("1") / "bsp" / "kernel.img"
    copy = dest.with_suffix(".copy")
    shutil.copyfile(dest, copy)
    os.replace(copy, dest)  # same bytes, but no longer objects/<sha> itself
    assert invalid_objects(storage, "1") == {sha["kernel"]}


def test_a_missing_link_is_recreated_not_failed(trail):
    storage, sha = trail
    dest = storage.trail_dir("1") / "app" / "root.squashfs"
    dest.unlink()
    assert invalid_objects(storage, "1") == frozenset()
    assert os.path.samestat(dest.stat(), storage.objects.path(sha["rootfs"]).stat())


def test_a_json_file_that_differs_fails_the_whole_revision(trail):
    storage, sha = trail
    (storage.trail_dir("1") / "app" / "run.json").write_text('{"name":"other"}')
    assert invalid_objects(storage, "1") == set(sha.values()) - {sha["verity"]}


def test_a_dm_verity_data_device_is_left_to_the_kernel(trail):
    storage, sha = trail
    _corrupt(storage.objects.path(sha["verity"]))
    assert invalid_objects(storage, "1") == frozenset()


# ------------------------------------------------------------------ the device (root)


@pytest.fixture(scope="module")
def states(tmp_path_factory):
    """Revision 0 and an update that changes only the kernel (a reboot transition), with an
    object of its own to corrupt; the kernel is not used outside QEMU, so the update would
    otherwise succeed."""
    need_device()
    revs = Revisions(tmp_path_factory.mktemp("ckrevs"), group_timeout=3)
    s0 = revs.state("ck0", {"app1": {"tag": "a1"}})
    s1 = revs.state("ck1", {"app1": {"tag": "a1"}})
    kernel2 = revs.root / "kernel2.img"
    kernel2.write_bytes(b"another test kernel\n" * 8)
    rc = pvreal_main(
        [
            "rev",
            "add-bsp",
            str(s1),
            "--kernel",
            str(kernel2),
            "--initrd",
            str(revs.initrd),
            "--objects",
            str(revs.objects),
        ]
    )
    assert rc == 0
    doc0, doc1 = json.loads(s0.read_text()), json.loads(s1.read_text())
    assert doc1["bsp/kernel.img"] != doc0["bsp/kernel.img"]
    return revs, s0, s1, doc1["bsp/kernel.img"]


def _update_with_corrupt_kernel(
    tmp_path: Path, states, config: dict, env: dict | None = None
) -> tuple[Daemon, dict]:
    revs, s0, s1, kernel = states
    d = Daemon(tmp_path / "dev", network=False, config=config, env=env)
    d.init(s0, revs.objects)
    d.start()
    doc = json.loads(s1.read_text())
    for key, value in doc.items():
        if isinstance(value, str) and len(value) == 64 and not key.startswith("#"):
            assert d.client.put_object(value, revs.objects / value).ok
    assert d.client.put_step("locals/k2", s1.read_bytes()).ok
    _corrupt(d.storage / "objects" / kernel)  # after the hash-checked upload, before the boot
    assert d.client.command("LOCAL_RUN", "locals/k2").ok
    record = d.client.wait("locals/k2", ("DONE", "ERROR"), timeout=40)
    deadline = time.monotonic() + 30
    status = d.wait_settled()
    while status["boots"] < (3 if record and record["status"] == "ERROR" else 2):
        assert time.monotonic() < deadline, d.tail()
        time.sleep(0.05)
        status = d.wait_settled()
    return d, {"record": record, "status": status}


@pytest.mark.xdist_group("real")
def test_corrupt_object_of_a_tried_revision_rolls_back(tmp_path, states):
    d, out = _update_with_corrupt_kernel(tmp_path, states, {})
    try:
        record, status = out["record"], out["status"]
        assert (record["status"], record["status-msg"]) == ("ERROR", OBJECT_VALIDATION), d.tail()
        assert status["running"] == "0" and status["pv_rev"] == "0" and status["pv_try"] == ""
        assert status["boots"] == 3  # factory, the try-boot, the rollback boot
    finally:
        d.stop()
    assert d.leftovers() == []


@pytest.mark.xdist_group("real")
@pytest.mark.parametrize(
    ("config", "env"),
    [({"PV_SECUREBOOT_CHECKSUM": 0}, None), ({}, {"pv_quickboot": "1"})],
    ids=["checksum-off", "pv_quickboot"],
)
def test_without_the_checksum_pass_the_same_revision_boots(tmp_path, states, config, env):
    """Either way out of `pv_state_validate_checksum` (state.c) leaves the corrupt kernel unseen."""
    d, out = _update_with_corrupt_kernel(tmp_path, states, config, env)
    try:
        record, status = out["record"], out["status"]
        assert record["status"] == "DONE", (record, d.tail())
        assert status["running"] == "locals/k2" and status["pv_rev"] == "locals/k2"
    finally:
        d.stop()
    assert d.leftovers() == []
