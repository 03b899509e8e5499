"""The device daemon as PID 1 of the QEMU guest (docs/qemu.md, "PID 1: the real daemon").

`guest_main(boot)` is called by pvreal.qemu.guest_init after machine bring-up. It runs the same
`Device` as `pvreal device run`, with what owning a real machine changes:

- the bootloader is real: GRUB applied the pv_rev/pv_try/pv_trying latch before Linux started,
  so the booted revision is the kernel command line's `pv_rev=` and the daemon never applies the
  latch itself;
- SetBootEnv writes `/storage/boot/grubenv`, the file GRUB reads, **in place** (1024 bytes,
  O_SYNC, never sparse: GRUB's save_env refuses sparse files and follows the file's block list,
  and Pantavisor's grub.c writes in place too). Whenever pv_try changes (a new try, a commit, a
  rollback cleared), pv_trying goes too (shared.engine.bootloader.latch_after_try_write decides
  it; this only writes it);
- Reboot = stop containers, sync, reboot(2) (POWEROFF_DEVICE = poweroff); GRUB then boots;
- linking a trail also writes its kernel arguments for GRUB (pvreal.qemu.cmdline);
- the device's bridge lives in the machine's own netns (`device_netns=None`); each container
  gets its own netns and a veth to it, as outside QEMU;
- the pv-ctrl socket is reachable from the host through a TCP port (QEMU user networking with
  `restrict=on` and a hostfwd on 127.0.0.1): each TCP connection is spliced to /run/pv-ctrl.

Progress is printed on the console as `PVTWIN ...` lines, which the host's timeline reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from pvreal.bootenv import FaithfulStore, grub
from pvreal.device.daemon import Device, DeviceOptions
from pvreal.device.latch import BootFiles
from pvreal.qemu.cmdline import write_cmdline_env
from pvreal.qemu.guest_init import MS_BIND, MS_MOVE, MS_REC
from shared.engine import bootloader
from shared.engine.commands import LinkObjects, Reboot, SetBootEnv
from shared.engine.events import Event

log = logging.getLogger(__name__)

CTRL_SOCKET = Path("/run/pv-ctrl")
GUEST_CTRL_PORT = 7100  # the guest's TCP port spliced to CTRL_SOCKET (hostfwd target)
GUEST_ADDRESS = "10.0.2.15"  # QEMU user networking's default guest address
DEVICE_CONFIG = "pvtwin-device.json"  # on the storage: {"config": {...}} Pantavisor keys
RUNTIME_MODULES = ("loop", "squashfs", "overlay", "dm_verity", "virtio_net", "veth", "bridge")
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class Boot(Protocol):  # pvreal.qemu.guest_init.GuestBoot (not imported: keeps PID 1 imports lean)
    pv_rev: str
    pv_try: str
    cmdline: dict[str, str]
    storage: str
    env_path: str
    modules: Any

    def reboot(self) -> None: ...
    def poweroff(self) -> None: ...


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def set_grubenv(store: FaithfulStore, pv_rev: str | None, pv_try: str | None) -> dict[str, str]:
    """The engine's SetBootEnv on GRUB's env, in place; GRUB's latch shares that file, so what
    it becomes is written too (both decided in shared.engine.bootloader)."""
    before = store.load()
    env = bootloader.env_after_set(before, pv_rev, pv_try)
    latch = bootloader.latch_after_try_write(
        bootloader.latch_from_env(before),
        before.get(bootloader.PV_TRY, ""),
        env.get(bootloader.PV_TRY, ""),
    )
    env = bootloader.latch_to_env(env, latch)
    store.save(env)
    return env


class GuestDevice(Device):
    """`Device` on a machine it owns, behind a real GRUB (see the module docstring)."""

    def __init__(self, options: DeviceOptions, boot: Boot):
        super().__init__(options)
        self.guest = boot
        self.grubenv = FaithfulStore(boot.env_path, grub())
        # Pantavisor's env is GRUB's own file; the latch is GRUB's business (not read here).
        self.boot_files = BootFiles(self.grubenv, self.grubenv)
        self.executor.boot = self.boot_files
        self.executor._handlers[SetBootEnv] = self._set_boot_env
        link = self.executor._handlers[LinkObjects]
        self.executor._handlers[LinkObjects] = lambda cmd: self._link_objects(link, cmd)

    def _choose_boot(self) -> tuple[str, dict[str, str]]:
        env = self.grubenv.load()
        rev = self.guest.pv_rev or env.get(bootloader.PV_REV, "") or bootloader.DEFAULT_REV
        return rev, env

    def _set_boot_env(self, cmd: SetBootEnv) -> list[Event]:
        env = set_grubenv(self.grubenv, cmd.pv_rev, cmd.pv_try)
        say("PVTWIN ENV " + " ".join(f"{k}={env[k]}" for k in sorted(env)))
        return []

    def _link_objects(self, link: Any, cmd: LinkObjects) -> list[Event]:
        events = link(cmd)
        with contextlib.suppress(OSError):
            write_cmdline_env(self.storage.trail_dir(cmd.rev) / ".pv", cmd.state.entries)
        return events

    def _reboot(self, command: Reboot) -> None:
        say(f"PVTWIN DEVICE {'poweroff' if command.poweroff else 'reboot'}: {command.reason}")
        self.last_reboot = command.reason
        self.runner.stop_all(self.config.stop_grace)
        self.timers.clear()
        os.sync()
        if command.poweroff:
            self.guest.poweroff()
        self.guest.reboot()


# ------------------------------------------------------------------------------ host access


def bring_up_host_link(port: int = GUEST_CTRL_PORT) -> threading.Thread | None:
    """eth0 (QEMU user net) up with the guest address, and a TCP → pv-ctrl splice on `port`."""
    if not os.path.exists("/sys/class/net/eth0"):
        return None
    # busybox ip: three netlink calls do not justify importing pyroute2 (seconds under TCG)
    for argv in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "set", "eth0", "up"],
        ["ip", "addr", "add", f"{GUEST_ADDRESS}/24", "dev", "eth0"],
    ):
        subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listener = socket.create_server(("0.0.0.0", port), reuse_port=False)
    thread = threading.Thread(target=_accept, args=(listener,), name="ctrl-tcp", daemon=True)
    thread.start()
    return thread


def _accept(listener: socket.socket) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_splice_to_ctrl, args=(client,), daemon=True).start()


def _splice_to_ctrl(client: socket.socket) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(str(CTRL_SOCKET))
    except OSError:
        client.close()
        upstream.close()
        return
    done = threading.Event()

    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(1 << 16):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
            done.set()

    back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    back.start()
    pump(client, upstream)
    back.join(120)
    client.close()
    upstream.close()


# ------------------------------------------------------------------------------ PID 1


def _leave_rootfs() -> None:
    """Make `/` a bind mount of the initramfs instead of rootfs itself: pivot_root(2), which runc
    uses to jail every container, refuses rootfs (EINVAL). The usual dance: rbind / somewhere,
    move that mount onto /, chroot into it; every mount (proc, sys, dev, /storage) comes along."""
    from pvreal.qemu.guest_init import mount

    mount("/", "/.pvroot", "", MS_BIND | MS_REC)
    os.chdir("/.pvroot")
    mount(".", "/", "", MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def open_verity(trail: Path, volume: str) -> Path:
    """Map a `dm:` root volume with real dm-verity (`veritysetup open`); the block device to
    mount. Blocks that do not match the hash tree read as EIO, so a tampered image fails the
    mount or the container's first reads, i.e. the container fails."""
    dm = json.loads((trail / "_dm" / f"{volume}.json").read_text())
    data = trail / dm.get("data_device", volume)
    hashes = trail / dm.get("hash_device", f"{volume}.hash")
    name = "pv-" + hashlib.sha256(str(data).encode()).hexdigest()[:16]
    device = Path("/dev/mapper") / name
    if not device.exists():
        argv = ["veritysetup", "open", str(data), name, str(hashes), dm.get("root_hash", "")]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            from pvreal.mounts import MountError

            say(f"PVTWIN VERITY refused {data}: {done.stderr.strip()}")
            raise MountError(f"veritysetup open failed: {done.stderr.strip()}", source=str(data))
    say(f"PVTWIN VERITY opened {trail.name}/{volume} as {device}")
    return device


def _use_device_mapper() -> None:
    """Root volumes `dm:<vol>` go through dm-verity in the kernel instead of the userspace
    check `pvreal.mounts` does on hosts without device-mapper."""
    from pvreal import mounts

    plain = mounts._root_image

    def root_image(storage: Any, rev: str, name: str, run_json: Any) -> Path:
        volume = run_json.get("root-volume") if hasattr(run_json, "get") else None
        if isinstance(volume, str) and volume.startswith(mounts.DM_PREFIX):
            return open_verity(storage.trail_dir(rev) / name, volume[len(mounts.DM_PREFIX) :])
        return plain(storage, rev, name, run_json)

    mounts._root_image = root_image


# the seals runc checks for (all four: nothing can change the copy, nor the seals)
RUNC_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_sealed_runc: list[int] = []  # the sealed copy's memfd, held by PID 1 for as long as it runs


def _seal_runc() -> None:
    """Put a sealed in-memory copy of runc over its binary, as runc's own `memfd-bind` does. runc
    1.1 guards against CVE-2019-5736 by copying its binary (8.75 MB here) into a fresh memfd and
    re-executing it before every container's init, unless it already runs from a fully sealed
    memfd. Under TCG the copy and the re-executed binary's code, translated again, are paid at
    every container start. A memfd lives on the kernel's internal mount, which cannot be
    bind-mounted directly: the mount goes through O_PATH magic links, and it lasts while its
    memfd is open, so PID 1 keeps that open. On any failure runc simply copies itself as before."""
    runc = shutil.which("runc")
    if runc is None:
        return
    fd = -1
    try:
        fd = os.memfd_create("runc", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        with open(runc, "rb") as source:
            size, sent = os.fstat(source.fileno()).st_size, 0
            while sent < size:
                sent += os.sendfile(fd, source.fileno(), sent, size - sent)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, RUNC_SEALS)
        link = os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        target = os.open(runc, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            from pvreal.qemu.guest_init import bind_mount

            bind_mount(f"/proc/self/fd/{link}", f"/proc/self/fd/{target}")
        finally:
            os.close(link)
            os.close(target)
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        say(f"PVTWIN RUNC not sealed ({exc}): runc copies itself at every container start")
        return
    _sealed_runc.append(fd)


def _mount_cgroups() -> None:
    from pvreal.qemu.guest_init import mount

    with contextlib.suppress(OSError):
        mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0)


def _device_config(storage: Path) -> dict[str, Any]:
    try:
        data = json.loads((storage / DEVICE_CONFIG).read_text())
    except FileNotFoundError:
        return {}
    return dict(data.get("config", {}))


def _report(device: GuestDevice) -> None:
    """Print status changes on the console: the host's timeline (`PVTWIN STATUS ...`)."""
    last: tuple[Any, ...] = ()
    while True:
        status = device.status()
        revs = [r for r in (status.get("update"), status.get("booted")) if r]
        progress = {}
        for rev in dict.fromkeys(revs):
            with contextlib.suppress(Exception):
                progress[rev] = device.storage.read_progress(rev) or {}
        key = (status.get("running"), status.get("phase"), json.dumps(progress, sort_keys=True))
        if key != last and status:
            last = key
            for rev, rec in progress.items():
                say(
                    f"PVTWIN STATUS rev={rev} status={rec.get('status', '')} "
                    f"progress={rec.get('progress', '')} running={status.get('running')} "
                    f"msg={rec.get('status-msg', '')}"
                )
        if device.error is not None:
            return
        time.sleep(0.3)


def guest_main(boot: Boot) -> int:
    """Run the device as PID 1 until it powers off (0) or fails (1: reset)."""
    os.environ["PATH"] = PATH
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="pv: %(message)s")
    boot.modules.load(RUNTIME_MODULES)
    _leave_rootfs()
    _mount_cgroups()
    _seal_runc()
    if shutil.which("veritysetup"):
        _use_device_mapper()
    from pvreal.ctrl.server import serve_device

    storage = Path(boot.storage)
    options = DeviceOptions(
        storage=storage,
        bootloader="grub",
        ordering="faithful",
        config=_device_config(storage),
        run_dir=Path("/run/pvtwin/device"),
        network=True,
        device_netns=None,
    )
    device = GuestDevice(options, boot)
    device.start()
    server = serve_device(device, CTRL_SOCKET)
    bring_up_host_link()
    if not device.wait_booted(120):
        say(f"PVTWIN DEVICE did not boot: {device.error}")
        return 1
    status = device.status()
    for _ in range(50):  # the booted flag is set just before the status is published
        if status.get("booted"):
            break
        time.sleep(0.1)
        status = device.status()
    # uptime=: the guest's clock, for the host's guest-side boot breakdown (pvreal.qemu.timeline)
    say(f"PVTWIN DEVICE up booted={status.get('booted')} running={status.get('running')} "
        f"uptime={time.clock_gettime(time.CLOCK_BOOTTIME):.2f}")  # fmt: skip
    threading.Thread(target=_report, args=(device,), name="report", daemon=True).start()
    while device.running:
        device.join(1.0)
    server.close()
    say(f"PVTWIN DEVICE stopped: {device.error}")
    return 0 if device.error is None else 1
