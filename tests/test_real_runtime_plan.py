"""What the real backend would mount and run, checked without root: mounts go to a recording
MountOps, runc's config.json is inspected as data, the address pool is plain Python."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvreal.mounts import (
    MountError,
    VolumeMount,
    mount_container,
    persistence_of,
    volume_container_path,
)
from pvreal.netns import AddressPool, NetworkError
from pvreal.rev.build import docker_volume_key
from pvreal.runc import LxcSettings, RuncError, bundle_config, lxc_config_text
from pvreal.storage import Storage


class RecordingOps:
    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple] = []
        self.fail_on = fail_on

    def mount(self, source, target, fstype, flags, data):
        if fstype == self.fail_on:
            raise MountError("refused", source=str(target))
        self.calls.append(("mount", fstype, Path(target), data))

    def loop_mount(self, image, target, fstype):
        self.calls.append(("loop", fstype, Path(target), str(image)))

    def umount(self, target, *, lazy=False):
        self.calls.append(("umount", Path(target)))


def _storage_with(tmp_path: Path, run_json: dict, *, config_dir: bool = False) -> Storage:
    storage = Storage(tmp_path / "storage")
    storage.init_layout()
    image = b"squashfs"
    sha = storage.objects.add_bytes(image)
    state = {
        "#spec": "pantavisor-service-system@1",
        "app/root.squashfs": sha,
        "app/run.json": run_json,
    }
    if config_dir:
        state["_config/app/etc/motd"] = storage.objects.add_bytes(b"hello")
    storage.write_state("4", state)
    storage.link_trail("4", state)
    return storage


RUN = {"name": "app", "root-volume": "root.squashfs", "type": "lxc"}


@pytest.mark.parametrize(
    ("persistence", "upper_base"),
    [
        ("permanent", "storage/disks/perm/app/lxc-overlay"),
        ("revision", "storage/disks/rev/4/app/lxc-overlay"),
        ("boot", "run/app/lxc-overlay"),
        ("nonsense", "run/app/lxc-overlay"),  # an invalid value falls back to boot
    ],
)
def test_overlay_upper_follows_persistence(tmp_path: Path, persistence: str, upper_base: str):
    run_json = {**RUN, "storage": {"lxc-overlay": {"persistence": persistence}}}
    storage = _storage_with(tmp_path, run_json)
    ops = RecordingOps()
    mounted = mount_container(ops, storage, "4", "app", run_json, tmp_path / "run")
    overlay = [c for c in ops.calls if c[0] == "mount" and c[1] == "overlay"][0]
    assert f"upperdir={tmp_path / upper_base}/upper" in overlay[3]
    assert f"workdir={tmp_path / upper_base}/work" in overlay[3]
    tmpfs = [c for c in ops.calls if c[1] == "tmpfs"]
    assert bool(tmpfs) == (persistence_of({"persistence": persistence}) == "boot")
    assert mounted.rootfs == tmp_path / "run/app/rootfs"


def test_config_dir_is_the_top_lower_layer_and_unmount_is_reversed(tmp_path: Path):
    storage = _storage_with(tmp_path, RUN, config_dir=True)
    ops = RecordingOps()
    mounted = mount_container(ops, storage, "4", "app", RUN, tmp_path / "run")
    loop = ops.calls[0]
    assert loop[:3] == ("loop", "squashfs", tmp_path / "run/app/root")
    assert loop[3] == str(storage.trail_dir("4") / "app/root.squashfs")
    overlay = ops.calls[-1][3]
    config = storage.trail_dir("4") / "_config/app"
    assert f"lowerdir={config}:{tmp_path / 'run/app/root'}," in overlay
    made = [c[2] for c in ops.calls]
    ops.calls.clear()
    mounted.unmount()
    assert [c[1] for c in ops.calls] == list(reversed(made))


def test_a_failed_mount_undoes_the_earlier_ones(tmp_path: Path):
    storage = _storage_with(tmp_path, RUN)
    ops = RecordingOps(fail_on="overlay")
    with pytest.raises(MountError):
        mount_container(ops, storage, "4", "app", RUN, tmp_path / "run")
    assert [c[0] for c in ops.calls] == ["loop", "mount", "umount", "umount"]


def test_missing_root_volume_is_named(tmp_path: Path):
    storage = _storage_with(tmp_path, RUN)
    with pytest.raises(MountError, match="root-volume"):
        mount_container(RecordingOps(), storage, "4", "app", {"name": "app"}, tmp_path / "run")


def test_volumes_bind_permanent_and_revision_tmpfs_for_boot(tmp_path: Path):
    run_json = {
        **RUN,
        "storage": {
            "docker--etc-NetworkManager-system-connections": {"persistence": "permanent"},
            "docker--var-cache": {"persistence": "revision"},
            "docker--tmp-scratch": {"persistence": "boot"},
            "docker--no-persistence": {"disk": "x"},  # no persistence: no volume at all
            "lxc-overlay": {"persistence": "boot"},
        },
    }
    storage = _storage_with(tmp_path, run_json)
    mounted = mount_container(RecordingOps(), storage, "4", "app", run_json, tmp_path / "run")
    by_dest = {v.destination: v for v in mounted.volumes}
    assert set(by_dest) == {"/etc/NetworkManager/system/connections", "/var/cache", "/tmp/scratch"}
    assert by_dest["/var/cache"].source == tmp_path / "storage/disks/rev/4/app/docker--var-cache"
    assert by_dest["/var/cache"].source.is_dir()
    assert by_dest["/tmp/scratch"].source is None


def test_docker_volume_names_round_trip():
    assert docker_volume_key("/etc/dropbear/") == "docker--etc-dropbear"
    assert (
        volume_container_path(docker_volume_key("/var/pvr-sdk")) == "/var/pvr/sdk"
    )  # dashes are ambiguous
    assert volume_container_path("docker--home-pantavisor-.ssh") == "/home/pantavisor/.ssh"


# ---- LXC config and config.json

CONF = """
# a Pantavisor container's LXC config
lxc.uts.name = app
lxc.init.cmd = /bin/app --serve
lxc.init.cwd = /srv
lxc.environment = PATH=/bin
lxc.environment = MODE=prod
lxc.cgroup.memory.limit_in_bytes = 64M
lxc.cgroup2.pids.max = 40
lxc.cap.drop = net_raw mknod
"""


def test_lxc_settings_parse():
    s = LxcSettings.parse(CONF)
    assert s.init == ("/bin/app", "--serve") and s.cwd == "/srv"
    assert s.env == ("PATH=/bin", "MODE=prod")
    assert (s.memory_limit, s.pids_limit) == (64 << 20, 40)
    assert s.cap_drop == {"CAP_NET_RAW", "CAP_MKNOD"}
    assert LxcSettings.parse(lxc_config_text(s, "app")).memory_limit == 64 << 20
    quoted = LxcSettings(init=("/bin/sh", "-c", "exit 3"))
    assert LxcSettings.parse(lxc_config_text(quoted, "app")).init == ("/bin/sh", "-c", "exit 3")
    with pytest.raises(RuncError, match="lxc.cgroup.pids.max"):
        LxcSettings.parse("lxc.cgroup.pids.max = lots")


def test_bundle_config():
    settings = LxcSettings.parse(CONF)
    cfg = bundle_config(
        name="app",
        rootfs=Path("/run/pv/app/rootfs"),
        settings=settings,
        netns_path=Path("/var/run/netns/dev-app"),
        ctrl_socket=Path("/run/pv/ctrl/app/pv-ctrl"),
        volumes=[
            VolumeMount("docker--data", "/data", Path("/storage/disks/perm/app/docker--data")),
            VolumeMount("docker--tmp", "/tmp", None),
        ],
        cgroups_path="pvtwin/x-app",
    )
    assert cfg["hostname"] == "app"
    assert cfg["root"] == {"path": "/run/pv/app/rootfs", "readonly": False}
    assert cfg["process"]["args"] == ["/bin/app", "--serve"] and cfg["process"]["cwd"] == "/srv"
    assert cfg["process"]["terminal"] is False
    caps = cfg["process"]["capabilities"]["bounding"]
    assert "CAP_NET_RAW" not in caps and "CAP_KILL" in caps
    ns = {n["type"]: n.get("path") for n in cfg["linux"]["namespaces"]}
    assert ns == {
        "pid": None,
        "ipc": None,
        "uts": None,
        "mount": None,
        "network": "/var/run/netns/dev-app",
    }
    res = cfg["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20} and res["pids"] == {"limit": 40}
    assert cfg["linux"]["cgroupsPath"] == "pvtwin/x-app"
    mounts = {m["destination"]: m for m in cfg["mounts"]}
    assert {"/proc", "/sys", "/dev"} <= set(mounts)
    assert mounts["/pantavisor/pv-ctrl"]["source"] == "/run/pv/ctrl/app/pv-ctrl"
    assert mounts["/data"]["type"] == "bind" and mounts["/tmp"]["type"] == "tmpfs"


def test_no_limits_when_the_revision_asks_for_none():
    res = bundle_config(name="a", rootfs=Path("/r"), settings=LxcSettings())["linux"]["resources"]
    assert "memory" not in res and "pids" not in res


# ---- address pool


def test_address_pool():
    pool = AddressPool.of("10.213.5.0/29")
    assert str(pool.gateway) == "10.213.5.1/29"
    leases = [str(pool.allocate(f"c{i}")) for i in range(5)]
    assert leases == [f"10.213.5.{i}/29" for i in range(2, 7)]
    assert str(pool.allocate("c0")) == "10.213.5.2/29"  # same owner, same lease
    with pytest.raises(NetworkError):
        pool.allocate("one-too-many")
    pool.release("c2")
    assert str(pool.allocate("late")) == "10.213.5.4/29"
