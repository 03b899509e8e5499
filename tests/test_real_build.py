"""`pvreal rev add-container` / `add-bsp`: reproducible squashfs objects, the container part as
Pantavisor's docker template writes it, dm-verity, and bad input that changes nothing."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from realkit import busybox_tree_fixture, need_tools  # noqa: F401 - a fixture
from test_real_oci import LOWER, UPPER, docker_save_tar

from pvreal.cli import main
from pvreal.squashfs import verity_verify
from shared import canonical


@pytest.fixture
def rootfs(busybox_tree: Path) -> Path:
    need_tools("mksquashfs")
    return busybox_tree


def state_of(path: Path) -> dict:
    text = path.read_bytes()
    assert canonical.is_canonical(text)
    return canonical.loads(text)


def test_add_container_writes_the_part_and_a_reproducible_object(tmp_path: Path, rootfs: Path):
    state_file = tmp_path / "rev" / "state.json"
    state_file.parent.mkdir()
    args = ["rev", "add-container", str(state_file), "app", "--rootfs", str(rootfs)]
    assert main([*args, "--group", "app", "--status-goal", "READY", "--pids-limit", "32"]) == 0
    state = state_of(state_file)
    assert state["#spec"] == "pantavisor-service-system@1"
    run = state["app/run.json"]
    assert run["#spec"] == "service-manifest-run@1"
    assert (run["name"], run["type"], run["root-volume"]) == ("app", "lxc", "root.squashfs")
    assert run["storage"] == {"lxc-overlay": {"persistence": "boot"}}
    assert (run["group"], run["status_goal"]) == ("app", "READY")
    assert "restart_policy" not in run
    assert state["app/src.json"]["#spec"] == "service-manifest-src@1"
    objects = tmp_path / "rev" / "objects"
    sha = state["app/root.squashfs"]
    assert hashlib.sha256((objects / sha).read_bytes()).hexdigest() == sha
    conf = (objects / state["app/lxc.container.conf"]).read_text()
    assert "lxc.init.cmd = /sbin/init" in conf and "lxc.cgroup.pids.max = 32" in conf
    # Same input, other timestamps: same bytes, same object.
    copy = tmp_path / "copy"
    shutil.copytree(rootfs, copy, symlinks=True)
    os.utime(copy / "sbin" / "init", (1, 1))
    args[-1] = str(copy)
    assert main([*args, "--objects", str(tmp_path / "other-objects")]) == 0
    assert state_of(state_file)["app/root.squashfs"] == sha
    assert "group" not in state_of(state_file)["app/run.json"]  # the part was replaced whole


def test_add_container_from_docker_save_tarball(tmp_path: Path):
    need_tools("mksquashfs", "unsquashfs")
    tarball = docker_save_tar([LOWER, UPPER], tmp_path / "img.tar")
    state_file = tmp_path / "state.json"
    assert main(["rev", "add-container", str(state_file), "web", "--oci", str(tarball)]) == 0
    state = state_of(state_file)
    image = tmp_path / "objects" / state["web/root.squashfs"]
    listing = subprocess.run(
        ["unsquashfs", "-lc", str(image)], capture_output=True, text=True, check=True
    ).stdout
    assert "squashfs-root/etc/keep" in listing and "squashfs-root/opaque/new" in listing
    assert "gone" not in listing and "old1" not in listing and ".wh." not in listing
    run = state["web/run.json"]
    assert run["storage"]["docker--data"] == {"persistence": "permanent"}
    src = state["web/src.json"]
    assert src["docker_config"]["Cmd"] == ["/bin/app", "--serve"]
    assert (src["docker_name"], src["docker_tag"]) == ("demo", "2")
    conf = (tmp_path / "objects" / state["web/lxc.container.conf"]).read_text()
    assert "lxc.init.cmd = /bin/app --serve" in conf and "lxc.environment = A=1" in conf


def test_verity_adds_hash_tree_and_dm_json(tmp_path: Path, rootfs: Path):
    need_tools("veritysetup")
    state_file = tmp_path / "state.json"
    assert (
        main(["rev", "add-container", str(state_file), "sec", "--rootfs", str(rootfs), "--verity"])
        == 0
    )
    state = state_of(state_file)
    assert state["sec/run.json"]["root-volume"] == "dm:root.squashfs"
    dm = state["sec/_dm/root.squashfs.json"]
    assert dm["type"] == "dm-verity"
    assert (dm["data_device"], dm["hash_device"]) == ("root.squashfs", "root.squashfs.hash")
    objects = tmp_path / "objects"
    data, hashes = objects / state["sec/root.squashfs"], objects / state["sec/root.squashfs.hash"]
    assert verity_verify(data, hashes, dm["root_hash"])
    tampered = tmp_path / "tampered"
    shutil.copy(data, tampered)
    with open(tampered, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert not verity_verify(tampered, hashes, dm["root_hash"])


def test_verity_without_veritysetup_is_a_clear_error(
    tmp_path: Path, rootfs: Path, monkeypatch, capsys
):
    only_mksquashfs = tmp_path / "bin"
    only_mksquashfs.mkdir()
    (only_mksquashfs / "mksquashfs").symlink_to(shutil.which("mksquashfs"))
    monkeypatch.setenv("PATH", str(only_mksquashfs))
    state_file = tmp_path / "state.json"
    assert (
        main(["rev", "add-container", str(state_file), "c", "--rootfs", str(rootfs), "--verity"])
        == 1
    )
    assert "veritysetup not found" in capsys.readouterr().err
    assert not state_file.exists()


def test_bad_input_changes_nothing(tmp_path: Path, rootfs: Path, capsys):
    state_file = tmp_path / "state.json"
    assert main(["rev", "add-container", str(state_file), "app", "--rootfs", str(rootfs)]) == 0
    before = state_file.read_bytes()
    objects_before = sorted(os.listdir(tmp_path / "objects"))
    for argv in (
        [str(state_file), "app2", "--rootfs", str(tmp_path / "nope")],
        [str(state_file), "_config", "--rootfs", str(rootfs)],
        [str(state_file), "bsp", "--rootfs", str(rootfs)],
    ):
        assert main(["rev", "add-container", *argv]) == 1
    err = capsys.readouterr().err
    assert "nope" in err and "'_config'" in err
    assert state_file.read_bytes() == before
    assert sorted(os.listdir(tmp_path / "objects")) == objects_before
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": 1, "a": 2}')
    assert main(["rev", "add-container", str(broken), "x", "--rootfs", str(rootfs)]) == 1
    assert broken.read_text() == '{"a": 1, "a": 2}'


def test_add_bsp(tmp_path: Path):
    need_tools("mksquashfs")
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel")
    initrd.write_bytes(b"initrd")
    modules = tmp_path / "modules" / "6.1.0"
    modules.mkdir(parents=True)
    (modules / "modules.dep").write_text("")
    state_file = tmp_path / "state.json"
    argv = ["rev", "add-bsp", str(state_file), "--kernel", str(kernel), "--initrd", str(initrd)]
    assert main([*argv, "--modules", str(tmp_path / "modules"), "--cmdline", "console=ttyS0"]) == 0
    state = state_of(state_file)
    assert state["bsp/run.json"] == {
        "addons": [],
        "cmdline": "console=ttyS0",
        "initrd": "pantavisor",
        "linux": "kernel.img",
        "modules": "modules.squashfs",
    }
    assert state["bsp/kernel.img"] == hashlib.sha256(b"kernel").hexdigest()
    assert state["bsp/pantavisor"] == hashlib.sha256(b"initrd").hexdigest()
    assert (tmp_path / "objects" / state["bsp/modules.squashfs"]).is_file()
    assert main([*argv[:3], "--kernel", str(tmp_path / "missing"), "--initrd", str(initrd)]) == 1
    assert state_of(state_file) == state
