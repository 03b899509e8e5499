"""Root tests of the real runtime: containers built with `pvreal rev add-container`, checked out
into a storage tree, mounted (loop squashfs + overlay), wired by pyroute2, run by runc, stopped
with a grace period, and every mount, netns, veth, loop device and runc state cleaned up.

Run as root with runc, squashfs-tools and busybox-static installed; they skip otherwise (CI
forbids skips). Names carry a random suffix and the tests share one xdist group, so they never
collide with each other or with a second pytest worker.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyroute2 import NetNS, netns
from realkit import busybox_tree_fixture, need_root, need_tools  # noqa: F401 - a fixture
from test_real_oci import _outer, _tar_bytes

from pvreal.cli import main
from pvreal.mounts import (
    LinuxMountOps,
    MountedContainer,
    MountError,
    mount_container,
    mount_points,
)
from pvreal.netns import ContainerNet, DeviceNetwork
from pvreal.runc import LxcSettings, Runc, RuncError, bundle_config, write_bundle
from pvreal.storage import Storage

pytestmark = [pytest.mark.root, pytest.mark.xdist_group("real")]

REV = "7"


@pytest.fixture
def real():
    need_root()
    need_tools("runc", "mksquashfs", "busybox")


class Device:
    """The pieces composed the way a device daemon does, for one test."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.suffix = secrets.token_hex(3)
        self.storage = Storage(tmp / "storage")
        self.storage.init_layout()
        self.state_file = tmp / "build" / "state.json"
        self.state_file.parent.mkdir()
        self.net = DeviceNetwork(f"pvt{self.suffix}", "10.213.0.0/24")
        self.runc = Runc(tmp / "runc-root")
        self.ops = LinuxMountOps()
        self.mounted: dict[str, MountedContainer] = {}
        self.nets: dict[str, ContainerNet] = {}
        self.start_times: list[float] = []

    def cid(self, name: str) -> str:
        return f"pvt{self.suffix}-{name}"

    def add(self, name: str, *args: str) -> None:
        objects = str(self.storage.objects.dir)
        assert (
            main(["rev", "add-container", str(self.state_file), name, "--objects", objects, *args])
            == 0
        )

    def install(self) -> dict:
        state = json.loads(self.state_file.read_text())
        self.storage.write_state(REV, state)
        self.storage.link_trail(REV, state)
        assert self.storage.check().ok
        self.net.setup()
        return state

    def start(self, name: str, state: dict, *, ctrl_socket: Path | None = None) -> None:
        began = time.monotonic()
        run_json = state[f"{name}/run.json"]
        mounted = mount_container(self.ops, self.storage, REV, name, run_json, self.tmp / "run")
        self.mounted[name] = mounted
        self.nets[name] = self.net.attach(name)
        conf = self.storage.trail_dir(REV) / name / "lxc.container.conf"
        config = bundle_config(
            name=name,
            rootfs=mounted.rootfs,
            settings=LxcSettings.parse(conf.read_text()),
            netns_path=self.nets[name].netns_path,
            ctrl_socket=ctrl_socket,
            volumes=mounted.volumes,
            cgroups_path=f"pvtwin/{self.cid(name)}",
        )
        bundle = self.tmp / "bundles" / name
        write_bundle(bundle, config)
        console = self.storage.log_dir(REV, name) / "lxc" / "console.log"
        self.runc.create(self.cid(name), bundle, console_log=console)
        self.runc.start(self.cid(name))
        self.start_times.append(time.monotonic() - began)

    def exec(self, name: str, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["runc", "--root", str(self.runc.root), "exec", self.cid(name), *argv],
            capture_output=True,
            text=True,
            timeout=20,
        )

    def stop(self, name: str, grace: float):
        result = self.runc.stop(self.cid(name), grace=grace)
        self.mounted.pop(name).unmount()
        self.net.detach(name)
        self.nets.pop(name, None)
        return result

    def wait_for_file(self, path: Path, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.01)
        return path.read_text()

    def teardown(self) -> None:
        for name in list(self.mounted):
            try:
                self.runc.stop(self.cid(name), grace=0)
            finally:
                self.mounted.pop(name).unmount()
        self.net.teardown()

    def assert_clean(self) -> None:
        assert mount_points(self.tmp) == []
        assert self.net.leftovers() == [] and self.net.device_netns not in netns.listnetns()
        assert self.runc.list_ids() == []
        # The loop device is released by the kernel (autoclear) when its last user closes it,
        # which can come a moment after the unmount returns.
        deadline = time.monotonic() + 3.0
        while _orphan_loops(self.storage.root) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _orphan_loops(self.storage.root) == []


def _loops_backed_by(prefix: Path) -> dict[str, str]:
    """Loop devices whose backing file lies under `prefix`: name -> a line for the report."""
    found = {}
    for dev in Path("/sys/block").glob("loop*"):
        backing = dev / "loop" / "backing_file"
        if backing.exists() and backing.read_text().strip().startswith(str(prefix)):
            autoclear = (dev / "loop" / "autoclear").read_text().strip()
            found[dev.name] = f"{dev.name} ({backing.read_text().strip()}, autoclear={autoclear})"
    return found


def _held_in_other_mount_namespaces(loop: str) -> bool:
    """Whether a process in another mount namespace still has /dev/<loop> mounted.

    unshare(CLONE_NEWNS) copies every mount of the namespace it leaves. A pvreal daemon that
    another xdist worker starts while this test has a squashfs mounted (a fleet device, say)
    keeps a copy of that mount, and with it the loop device, until it exits. That copy is not
    this test's leak: what the test unmounted is gone from its own namespace (checked above)."""
    ours = os.readlink("/proc/self/ns/mnt")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "ns" / "mnt") == ours:
                continue
            for line in (proc / "mountinfo").read_text().splitlines():
                if line.split(" - ", 1)[-1].split()[1:2] == [f"/dev/{loop}"]:
                    return True
        except OSError:  # the process left meanwhile, or is a kernel thread
            continue
    return False


def _orphan_loops(prefix: Path) -> list[str]:
    """Loop devices under `prefix` that nothing but a leak can explain."""
    loops = _loops_backed_by(prefix)
    return [line for name, line in loops.items() if not _held_in_other_mount_namespaces(name)]


def _cgroup_limit(pid: int, controller: str, v1_file: str, v2_file: str) -> str:
    """The limit file of the init's cgroup, v1 (hybrid hosts) or v2."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path(f"/sys/fs/cgroup/{controller}{path}/{v1_file}").read_text().strip()
        if controllers == "" and Path(f"/sys/fs/cgroup{path}/{v2_file}").exists():
            return Path(f"/sys/fs/cgroup{path}/{v2_file}").read_text().strip()
    raise AssertionError(f"no {controller} cgroup for pid {pid}")


@pytest.fixture
def device(real, tmp_path: Path):
    dev = Device(tmp_path)
    try:
        yield dev
    finally:
        dev.teardown()


def test_two_containers_network_hostname_limits_and_stop(device: Device, busybox_tree: Path):
    device.add("alpha", "--rootfs", str(busybox_tree), "--persistence", "revision")
    device.add(
        "beta",
        "--rootfs",
        str(busybox_tree),
        "--init",
        "/sbin/stubborn-init",
        "--memory-limit",
        str(64 << 20),
        "--pids-limit",
        "32",
    )
    state = device.install()
    ctrl = device.tmp / "ctrl" / "alpha" / "pv-ctrl"
    ctrl.parent.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(ctrl))
    try:
        device.start("alpha", state, ctrl_socket=ctrl)
        device.start("beta", state)

        # The init saw its own name as hostname; alpha's overlay upper is a revision volume.
        upper = device.storage.volume_dir("alpha", "lxc-overlay", "revision", REV) / "upper"
        assert device.wait_for_file(upper / "tmp" / "hostname-at-start").strip() == "alpha"
        assert device.exec("beta", "hostname").stdout.strip() == "beta"
        assert device.exec("alpha", "test", "-S", "/pantavisor/pv-ctrl").returncode == 0
        assert device.exec("alpha", "touch", "/bin/new-file").returncode == 0  # overlay: writable
        assert (upper / "bin" / "new-file").exists()

        # Each container has its own netns with lo and eth0; they reach each other and the bridge.
        a, b = device.nets["alpha"], device.nets["beta"]
        with NetNS(a.netns_name) as ns:
            links = {link.get("ifname"): link.get("state") for link in ns.get_links()}
        assert links == {"lo": "up", "eth0": "up"}
        for target in (str(b.address.ip), str(device.net.pool.gateway.ip)):
            ping = device.exec("alpha", "ping", "-c", "1", "-W", "2", target)
            assert ping.returncode == 0, ping.stdout + ping.stderr
        assert device.exec("beta", "ping", "-c", "1", "-W", "2", str(a.address.ip)).returncode == 0

        # Limits asked for in beta's LXC config reached its cgroup.
        init = device.runc.init_of(device.cid("beta"))
        assert init is not None
        limit = _cgroup_limit(init.pid, "memory", "memory.limit_in_bytes", "memory.max")
        assert int(limit) == 64 << 20
        assert _cgroup_limit(init.pid, "pids", "pids.max", "pids.max") == "32"
        assert device.runc.state(device.cid("beta"))["status"] == "running"

        # alpha leaves on SIGTERM; beta ignores it (pid 1 without a handler) and gets SIGKILL.
        polite = device.stop("alpha", grace=5.0)
        stubborn = device.stop("beta", grace=0.3)
    finally:
        listener.close()
    # "exited": gone on SIGTERM within the grace; "killed": still there when the grace ran out
    assert polite.how == "exited"
    assert stubborn.how == "killed"
    console = device.storage.log_dir(REV, "alpha") / "lxc" / "console.log"
    assert "init: SIGTERM, leaving" in console.read_text()
    device.net.teardown()
    device.assert_clean()
    print(
        f"\nstart: {', '.join(f'{t * 1000:.0f} ms' for t in device.start_times)}; "
        f"stop: polite {polite.seconds * 1000:.0f} ms, stubborn {stubborn.seconds * 1000:.0f} ms"
    )


def test_exit_is_detected(device: Device, busybox_tree: Path):
    device.add("brief", "--rootfs", str(busybox_tree), "--init", "/bin/sh -c 'exit 3'")
    state = device.install()
    device.start("brief", state)
    assert device.runc.wait_exit(device.cid("brief"), timeout=5.0)
    assert device.runc.exited(device.cid("brief"))
    assert device.runc.state(device.cid("brief"))["status"] == "stopped"
    assert device.stop("brief", grace=1.0).how == "gone"
    device.net.teardown()
    device.assert_clean()


def test_oci_image_runs_with_whiteout_and_permanent_volume(device: Device, busybox_tree: Path):
    """A two-layer docker-save image built here: busybox, then a layer that deletes a file."""
    base = device.tmp / "layer1.tar"
    subprocess.run(["tar", "-C", str(busybox_tree), "-cf", str(base), "."], check=True)
    upper = _tar_bytes([("etc/.wh.passwd", "file", b""), ("etc/motd", "file", b"from layer two\n")])
    config = {"config": {"Cmd": ["/sbin/init"], "Volumes": {"/data": {}}}}
    image = device.tmp / "image.tar"
    image.write_bytes(
        _outer(
            {
                "l1/layer.tar": base.read_bytes(),
                "l2/layer.tar": upper,
                "cfg.json": json.dumps(config).encode(),
                "manifest.json": json.dumps(
                    [
                        {
                            "Config": "cfg.json",
                            "RepoTags": ["bb:1"],
                            "Layers": ["l1/layer.tar", "l2/layer.tar"],
                        }
                    ]
                ).encode(),
            }
        )
    )
    device.add("img", "--oci", str(image))
    state = device.install()
    device.start("img", state)
    assert device.exec("img", "cat", "/etc/motd").stdout == "from layer two\n"
    assert device.exec("img", "test", "-e", "/etc/passwd").returncode == 1
    assert device.exec("img", "sh", "-c", "echo kept > /data/file").returncode == 0
    assert device.stop("img", grace=5.0).how == "exited"
    kept = device.storage.volume_dir("img", "docker--data", "permanent", REV) / "file"
    assert kept.read_text() == "kept\n"  # the permanent volume outlives the container
    device.net.teardown()
    device.assert_clean()


def test_five_start_stop_rounds_stop_politely_and_leave_nothing(device: Device, busybox_tree: Path):
    """Container start (mount + netns + runc create/start) and stop, 5 rounds of one container.
    The times are printed for the curious, not asserted: they measure the machine."""
    device.add("quick", "--rootfs", str(busybox_tree))
    state = device.install()
    stops = []
    for _ in range(5):
        device.start("quick", state)
        # Stop only once the init has installed its SIGTERM trap (it writes this file next).
        device.wait_for_file(device.mounted["quick"].rootfs / "tmp" / "hostname-at-start")
        stops.append(device.stop("quick", grace=5.0))
        assert device.mounted == {} and device.runc.list_ids() == []
    assert [stop.how for stop in stops] == ["exited"] * 5
    start_ms = statistics.median(device.start_times) * 1000
    stop_ms = statistics.median(stop.seconds for stop in stops) * 1000
    print(f"\nmedian start {start_ms:.0f} ms, median stop {stop_ms:.0f} ms over 5 rounds")
    device.net.teardown()
    device.assert_clean()


def test_private_mount_namespace_hides_daemon_mounts(real, tmp_path: Path):
    target = tmp_path / "m"
    target.mkdir()
    code = (
        "import sys; from pathlib import Path\n"
        "from pvreal.mounts import LinuxMountOps, enter_private_mount_namespace, mount_points\n"
        "enter_private_mount_namespace()\n"
        "LinuxMountOps().mount('tmpfs', Path(sys.argv[1]), 'tmpfs', 0, 'size=1m')\n"
        "print(mount_points(sys.argv[1]))\n"
        "sys.stdout.flush(); sys.stdin.read()\n"  # stay alive while the parent looks
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == repr([str(target)])
        assert mount_points(target) == []  # not visible outside the daemon's namespace
    finally:
        child.communicate("", timeout=10)
    assert child.returncode == 0


def test_dm_verity_volume_is_checked_before_mounting(device: Device, busybox_tree: Path):
    need_tools("veritysetup")
    device.add("sealed", "--rootfs", str(busybox_tree), "--verity")
    state = device.install()
    mounted = mount_container(
        device.ops, device.storage, REV, "sealed", state["sealed/run.json"], device.tmp / "run"
    )
    assert (mounted.rootfs / "bin" / "busybox").exists()
    mounted.unmount()
    image = device.storage.trail_dir(REV) / "sealed" / "root.squashfs"
    with open(image, "r+b") as f:  # tamper with the object (the trail is a hard link to it)
        f.seek(4096)
        f.write(b"\xff" * 16)
    with pytest.raises(MountError, match="dm-verity"):
        mount_container(
            device.ops, device.storage, REV, "sealed", state["sealed/run.json"], device.tmp / "run"
        )
    device.net.teardown()
    device.assert_clean()
    shutil.rmtree(device.tmp / "run", ignore_errors=True)


def test_a_failed_create_says_why_and_leaves_nothing(device: Device, busybox_tree: Path):
    device.add("broken", "--rootfs", str(busybox_tree), "--init", "/no/such/init")
    state = device.install()
    with pytest.raises(RuncError, match="no/such/init"):
        device.start("broken", state)
    assert device.runc.list_ids() == []  # runc removed its half-made container itself
    device.mounted.pop("broken").unmount()
    device.net.teardown()
    device.assert_clean()


def test_network_survives_a_daemon_crash(real):
    """A new daemon (same prefix) finds the old netns and veth and wires the container again."""
    prefix = f"pvt{secrets.token_hex(3)}"
    first = DeviceNetwork(prefix, "10.213.0.0/24")
    first.setup()
    old = first.attach("app")
    # no detach, no teardown: the daemon died here
    second = DeviceNetwork(prefix, "10.213.0.0/24")
    try:
        second.setup()
        new = second.attach("app")
        assert new.netns_name == old.netns_name and new.host_if == old.host_if
        with NetNS(new.netns_name) as ns:
            eth0 = ns.link_lookup(ifname="eth0")[0]
            addresses = [a.get("address") for a in ns.get_addr(index=eth0, family=socket.AF_INET)]
        assert addresses == [str(new.address.ip)]
    finally:
        second.teardown()
    assert second.leftovers() == [] and second.device_netns not in netns.listnetns()
