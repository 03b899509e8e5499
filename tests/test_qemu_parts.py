"""The QEMU boot chain's parts, without booting: cpio, kernel modules, GRUB script, disk, QMP."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pvreal.qemu import disk, grub, guest_init, kernel, timeline
from pvreal.qemu.cpio import CpioWriter
from pvreal.qemu.qmp import QmpClient, QmpError
from pvreal.qemu.runner import ConsoleLine


def test_cpio_archive_lists_parents_files_links_and_devices(tmp_path: Path) -> None:
    if not shutil.which("cpio"):
        pytest.skip("cpio not installed (Debian package cpio)")
    raw = io.BytesIO()
    archive = CpioWriter(raw)
    archive.file("usr/lib/x/hello.txt", b"hi\n", 0o640)
    archive.symlink("usr/bin/python3", "/usr/lib/x/hello.txt")
    archive.char_device("dev/urandom", 1, 9)
    archive.file("usr/lib/x/hello.txt", b"second copy is ignored\n")
    archive.close()
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=raw.getvalue(), capture_output=True, check=True
    ).stdout.decode()
    names = [
        line.split()[-1] if "->" not in line else line.split()[-3] for line in listing.splitlines()
    ]
    # parents come before their children, as the kernel's unpacker needs
    assert names.index("usr") < names.index("usr/lib") < names.index("usr/lib/x/hello.txt")
    device = next(line for line in listing.splitlines() if line.endswith("dev/urandom"))
    assert device.startswith("crw-rw-rw-") and "1," in device.replace(" ", "") and "9" in device
    extracted = tmp_path / "x"
    extracted.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames", "usr/lib/x/hello.txt"],
        input=raw.getvalue(), cwd=extracted, check=True,
    )  # fmt: skip
    assert (extracted / "usr/lib/x/hello.txt").read_bytes() == b"hi\n"


def _fake_module(folder: Path, name: str, depends: str) -> Path:
    path = folder / f"{name}.ko"
    path.write_bytes(
        b"\x7fELF junk\0license=GPL\0depends="
        + depends.encode()
        + b"\0name="
        + name.encode()
        + b"\0"
    )
    return path


def test_module_load_order_puts_dependencies_first_and_skips_builtins(tmp_path: Path) -> None:
    tree = tmp_path / "6.1.0-test-amd64"
    (tree / "kernel" / "fs").mkdir(parents=True)
    _fake_module(tree / "kernel" / "fs", "ext4", "jbd2,mbcache,crc16")
    _fake_module(tree / "kernel" / "fs", "jbd2", "")
    _fake_module(tree / "kernel" / "fs", "mbcache", "")
    _fake_module(tree / "kernel" / "fs", "dm-verity", "dm-bufio")
    _fake_module(tree / "kernel" / "fs", "dm-bufio", "")
    (tree / "modules.builtin").write_text("kernel/lib/crc16.ko\n")
    order = [p.name for p in kernel.load_order(["ext4", "dm_verity"], tree)]
    assert order.index("jbd2.ko") < order.index("ext4.ko")
    assert order.index("mbcache.ko") < order.index("ext4.ko")
    assert order.index("dm-bufio.ko") < order.index("dm-verity.ko")
    assert "crc16.ko" not in order  # built in: nothing to load
    with pytest.raises(kernel.ToolError, match="i6300esb"):
        kernel.load_order(["i6300esb"], tree)


def test_grub_script_latches_and_says_what_it_does_when_save_env_fails() -> None:
    failsafe = grub.boot_script()
    faithful = grub.boot_script(on_save_env_failure="boot-try")
    for script in (failsafe, faithful):
        assert "load_env -f ${pv_env} pv_rev pv_try pv_trying" in script
        assert "save_env -f ${pv_env} pv_trying" in script
        # the 16-bit boot protocol: GRUB's 32-bit `linux` hand-over took 2.1 s against 0.4-0.9 s under TCG
        assert "linux16 /trails/${boot_rev}/.pv/pv-kernel.img" in script
        assert "initrd16 /trails/${boot_rev}/.pv/pv-initrd.img" in script
        assert "pv_rev=${boot_rev} pv_try=${pv_try}" in script
        # pv_quickboot by default, as Pantavisor's generic U-Boot script (state.c skips the pass)
        assert f" {grub.QUICKBOOT} " not in script
    assert f" {grub.QUICKBOOT} " in grub.boot_script(quickboot=True)
    assert "booting committed" in failsafe and "booting the try anyway" not in failsafe
    assert "booting the try anyway" in faithful
    with pytest.raises(ValueError):
        grub.boot_script(on_save_env_failure="ignore")


def test_mbr_has_one_linux_partition_at_2048(tmp_path: Path) -> None:
    image = tmp_path / "d.img"
    image.write_bytes(b"\0" * (4 * 1024 * 1024))
    disk.write_mbr(image, 4 * 1024 * 1024)
    data = image.read_bytes()
    assert data[510:512] == b"\x55\xaa"
    entry = data[446:462]
    assert entry[4] == 0x83
    assert int.from_bytes(entry[8:12], "little") == 2048
    assert int.from_bytes(entry[12:16], "little") == 4 * 2048 - 2048
    if shutil.which("sfdisk"):  # an independent reader, when installed
        out = subprocess.run(
            ["sfdisk", "-d", str(image)], capture_output=True, text=True, check=True
        ).stdout
        assert "start=        2048" in out and "type=83" in out


needs_e2fs = pytest.mark.skipif(
    not (shutil.which("mkfs.ext4") and shutil.which("debugfs")),
    reason="mkfs.ext4/debugfs not installed (Debian package e2fsprogs)",
)


@needs_e2fs
def test_storage_disk_env_round_trip_in_place_and_fsck_clean(tmp_path: Path) -> None:
    kern = tmp_path / "k"
    kern.write_bytes(b"kernel" * 1000)
    initrd = tmp_path / "i"
    initrd.write_bytes(b"initrd" * 1000)
    tree = tmp_path / "tree"
    disk.stage_tree(
        tree, {"0": (kern, initrd), "1": (kern, initrd)}, {"pv_rev": "0"}, {"x/y": b"z"}
    )
    image = tmp_path / "storage.img"
    disk.make_image(image, tree, size_mb=16)
    assert disk.read_env(image) == {"pv_rev": "0"}
    assert disk.read_file(image, "trails/1/.pv/pv-initrd.img") == initrd.read_bytes()
    disk.write_env(image, {"pv_rev": "0", "pv_try": "1"})
    raw = disk.read_file(image, disk.ENV_FILE)
    assert len(raw) == 1024 and raw.startswith(b"# GRUB Environment Block\n")
    assert disk.read_env(image) == {"pv_rev": "0", "pv_try": "1"}
    disk.fsck(image)  # raises on any inconsistency
    if shutil.which("grub-editenv"):  # GRUB's own tool reads what we wrote
        copy = tmp_path / "grubenv"
        copy.write_bytes(raw)
        assert grub.grub_editenv_list(copy).split() == ["pv_rev=0", "pv_try=1"]
    with pytest.raises(disk.ToolError, match="not 5 bytes"):
        disk.write_file_in_place(image, disk.ENV_FILE, b"short")
    assert disk.read_env(image) == {"pv_rev": "0", "pv_try": "1"}  # unchanged


def test_cmdline_parse_and_harness_choice(tmp_path: Path) -> None:
    args = guest_init.parse_cmdline(
        "BOOT_IMAGE=/trails/1/.pv/pv-kernel.img quiet pv_rev=1 pv_try=1"
    )
    assert args["pv_rev"] == "1" and args["pv_try"] == "1" and args["quiet"] == ""
    pv = tmp_path / "trails" / "1" / ".pv"
    pv.mkdir(parents=True)
    (pv / "harness.json").write_text(json.dumps({"try": "commit,reboot", "boot": "poweroff"}))

    def boot(rev: str, try_: str, extra: str = "") -> guest_init.GuestBoot:
        cmdline = guest_init.parse_cmdline(f"pv_rev={rev} pv_try={try_} {extra}")
        return guest_init.GuestBoot(rev, try_, cmdline, str(tmp_path), "", guest_init.Modules("x"))

    assert guest_init.harness_actions(boot("1", "1")) == ["commit", "reboot"]
    assert guest_init.harness_actions(boot("1", "")) == ["poweroff"]
    assert guest_init.harness_actions(boot("0", "1")) is None  # no harness.json: the daemon's turn
    assert guest_init.harness_actions(boot("0", "", "pvtwin.harness=panic")) == ["panic"]


def test_harness_commit_takes_pv_try_and_drops_the_latch(tmp_path: Path) -> None:
    """The harness's commit writes what shared.engine.bootloader says: pv_rev=<try>, pv_try and
    the latch gone (a stale pv_trying would roll a later try of the same number back)."""
    env = tmp_path / "grubenv"
    env.write_bytes(disk.encode_env({"pv_rev": "0", "pv_try": "1", "pv_trying": "1", "x": "y"}))
    boot = guest_init.GuestBoot(
        "1", "1", {}, str(tmp_path), str(env), guest_init.Modules("x")
    )
    guest_init.commit(boot)
    assert guest_init.load_env(str(env)) == {"pv_rev": "1", "x": "y"}


def test_minimal_grubenv_writer_matches_pvreal_bootenv(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    path.write_bytes(disk.encode_env({"pv_rev": "0"}))
    guest_init._minimal_save(str(path), {"pv_rev": "3", "pv_try": "4"})
    assert path.read_bytes() == disk.encode_env({"pv_rev": "3", "pv_try": "4"})
    assert guest_init._minimal_decode(str(path)) == {"pv_rev": "3", "pv_try": "4"}


def test_timeline_splits_boots_and_reads_the_revision() -> None:
    text = [
        "PVGRUB: up", "PVGRUB: env pv_rev=[0] pv_try=[1] pv_trying=[]", "PVGRUB: first attempt of 1",
        "PVTWIN BOOT pv_rev=1 pv_try=1 cmdline=x uptime=3.1", "PVTWIN REBOOT uptime=3.2",
        "PVGRUB: up", "PVGRUB: try of 1 already attempted, rollback to 0",
        "PVTWIN BOOT pv_rev=0 pv_try=1 cmdline=x uptime=3.0", "PVTWIN POWEROFF uptime=3.1",
    ]  # fmt: skip
    result = timeline.boots(ConsoleLine(float(i), t) for i, t in enumerate(text))
    assert [(b.pv_rev, b.pv_try, b.ended) for b in result] == [
        ("1", "1", "reboot"),
        ("0", "1", "poweroff"),
    ]
    assert "rollback to 0" in timeline.render(result)


def test_qmp_client_handshake_command_error_and_events(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    seen: list[dict] = []

    def serve() -> None:
        conn, _ = server.accept()
        reader = conn.makefile("rb")
        conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
        for line in reader:
            request = json.loads(line)
            seen.append(request)
            if request["execute"] == "query-status":
                conn.sendall(
                    b'{"event": "RESET", "data": {}}\n{"return": {"status": "running", "running": true}}\n'
                )
            elif request["execute"] == "nope":
                conn.sendall(
                    b'{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}\n'
                )
            else:
                conn.sendall(b'{"return": {}}\n')
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with QmpClient(path) as qmp:
        assert qmp.query_status()["status"] == "running"
        assert qmp.events[0]["event"] == "RESET"
        with pytest.raises(QmpError, match="has not been found"):
            qmp.command("nope")
        qmp.system_reset()
    thread.join(5)
    server.close()
    assert [r["execute"] for r in seen] == [
        "qmp_capabilities",
        "query-status",
        "nope",
        "system_reset",
    ]


def test_cli_run_refuses_a_folder_that_is_not_a_built_image(tmp_path: Path, capsys) -> None:
    from pvreal.cli import main

    assert main(["qemu", "run", "--image", str(tmp_path)]) == 1
    assert "not a built image" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cli_build_rejects_bad_revisions_before_building(tmp_path: Path, capsys) -> None:
    from pvreal.cli import main

    assert main(["qemu", "build", "--out", str(tmp_path / "out"), "--revisions", "0,abc"]) == 1
    assert "--revisions" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


LEAN_CHECK = """
import sys
from pvreal.qemu.guest_init import PYROUTE2_NAMES, lean_pyroute2
assert lean_pyroute2(), "lean pyroute2 not installed"
import pvreal.netns, pvreal.device.machine  # the daemon's users of pyroute2 import as before
import pyroute2
assert all(hasattr(pyroute2, name) for name in PYROUTE2_NAMES)
heavy = [m for m in ("pyroute2.ndb", "pyroute2.ipdb", "pyroute2.conntrack", "pyroute2.plan9")
         if m in sys.modules]
assert not heavy, heavy
assert "unittest.mock" in sys.modules and "unittest.main" not in sys.modules  # lean unittest too
assert "pyroute2.iproute" in sys.modules  # imported when pvreal.netns asked for IPRoute
code = 0
if len(sys.argv) > 1:  # the daemon's network code, for real, on the lean package
    import pytest
    code = pytest.main(["-q", "-n", "0", "-p", "no:cacheprovider", sys.argv[1]])
    assert "pyroute2.ndb" not in sys.modules
assert pyroute2.IPDB.__name__ == "IPDB"  # any other name: the real __init__ runs, nothing is lost
assert "pyroute2.ndb" in sys.modules
sys.exit(code)
"""


def test_lean_pyroute2_gives_the_daemon_its_names_without_the_rest() -> None:
    """PID 1 registers pyroute2 (and unittest, which pyroute2 imports for `unittest.mock`) without
    their `__init__` (guest_init.lean_pyroute2): what the daemon imports from pyroute2 must still
    be there, and (as root) its bridge and veth wiring must work."""
    argv = [sys.executable, "-c", LEAN_CHECK]
    if os.geteuid() == 0:
        argv.append(str(Path(__file__).parent / "test_real_netns_own.py"))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_icount_makes_the_guest_clock_count_instructions_only_when_asked(tmp_path: Path) -> None:
    from pvreal.qemu import runner

    plain = runner.qemu_argv(tmp_path / "grub.lnx", tmp_path / "disk.img")
    assert "-icount" not in plain
    counted = runner.qemu_argv(tmp_path / "grub.lnx", tmp_path / "disk.img", icount=2)
    assert counted[counted.index("-icount") + 1] == "shift=2"  # sleep stays on: no clock warps


SEAL_CHECK = """
import fcntl, os, shutil, subprocess, sys
from pvreal.device import guest
runc = shutil.which("runc")
before = os.stat(runc).st_ino
guest._seal_runc()
assert guest._sealed_runc, "runc was not sealed"
with open(runc, "rb") as binary:
    seals = fcntl.fcntl(binary.fileno(), fcntl.F_GET_SEALS)
    assert seals == guest.RUNC_SEALS, seals
    assert os.fstat(binary.fileno()).st_ino != before  # the memfd, not the file on disk
print(subprocess.run([runc, "--version"], capture_output=True, text=True, check=True).stdout)
"""


def test_pid1_runs_runc_from_a_sealed_copy() -> None:
    """guest._seal_runc (PID 1 in QEMU) puts a fully sealed memfd copy of runc over its binary,
    the copy runc 1.1 accepts instead of cloning itself at every container start; runc still
    runs from it. Run in a private mount namespace, so the host's runc is left as it was."""
    from realkit import need_root, need_tools

    need_root()
    need_tools("runc", "unshare")
    argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", SEAL_CHECK]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "runc version" in done.stdout


def test_initramfs_fingerprint_reads_the_sourceless_pyc_of_dependencies(tmp_path: Path) -> None:
    """Third-party packages go in as sourceless .pyc (no .py beside them): a changed one must
    rebuild the archive, while pvtwin's own __pycache__ files stay derived from their sources."""
    from pvreal.qemu.initramfs import Plan

    old, new = tmp_path / "a-x.pyc", tmp_path / "b-x.pyc"
    old.write_bytes(b"old")
    new.write_bytes(b"new")
    for dest, counted in (
        ("usr/lib/pvtwin/pyroute2/x.pyc", True),
        ("usr/lib/pvtwin/pvreal/__pycache__/x.cpython-311.pyc", False),
    ):
        plan = Plan(files={dest: old})
        before = plan.fingerprint()
        plan.files[dest] = new
        assert (plan.fingerprint() != before) is counted, dest
