"""PID 1 of the QEMU guest: bring the machine up, then hand over to the device daemon.

Runs from the initramfs as `/init` (python3 -S), before anything else exists, so it uses the
standard library only (and pvreal.bootenv when it can be imported). Two parts:

1. Machine bring-up, kept when the daemon lands: mount proc/sys/devtmpfs/tmpfs, load the storage
   modules with finit_module(2), mount the storage partition on /storage, print
   `PVTWIN BOOT pv_rev=<rev> pv_try=<try> cmdline=<...>` on the console.
2. Hand-over: `pvreal.device.guest_main(boot)` when that function exists and no harness is asked
   for; otherwise the boot chain test harness below (read the latch, then the actions of
   /storage/trails/<rev>/.pv/harness.json or of `pvtwin.harness=` on the command line).

Harness actions (comma separated, run in order): commit, reboot, poweroff, panic, watchdog[:S]
(arm /dev/watchdog with an S second timeout and stop petting it), hang, sleep:S. harness.json is
{"try": "<actions when this revision boots as pv_try>", "boot": "<actions otherwise>"}.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import importlib
import importlib.util
import json
import os
import struct
import sys
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field

STORAGE = "/storage"
STORAGE_DEVICE = "/dev/vda1"
ENV_PATH = STORAGE + "/boot/grubenv"
MODULES_INDEX = "/lib/modules/{version}/pvtwin-modules.json"

RB_AUTOBOOT = 0x01234567
RB_POWER_OFF = 0x4321FEDC
SYS_FINIT_MODULE = 313  # x86_64
WDIOC_SETTIMEOUT = 0xC0045706
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_MOVE, MS_REC = 0x1000, 0x2000, 0x4000

_libc = ctypes.CDLL(None, use_errno=True)


def say(text: str) -> None:
    """One marker line on the console, with the guest's uptime (the host matches on these)."""
    try:
        with open("/proc/uptime") as f:
            uptime = f.read().split()[0]
    except OSError:
        uptime = "?"
    sys.stdout.write(f"{text} uptime={uptime}\n")
    sys.stdout.flush()


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    os.makedirs(target, exist_ok=True)
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        if err != errno.EBUSY:
            raise OSError(err, f"mount {source} on {target} ({fstype}): {os.strerror(err)}")


def bind_mount(source: str, target: str) -> None:
    """A bind mount onto an existing file or folder (`mount` creates its target as a folder)."""
    if _libc.mount(source.encode(), target.encode(), b"", MS_BIND, b"") != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind mount {source} on {target}: {os.strerror(err)}")


def umount(target: str) -> None:
    _libc.umount2(target.encode(), 0)


def reboot(command: int) -> None:
    """sync, unmount /storage, then reboot(2); never returns."""
    os.sync()
    umount(STORAGE)
    _libc.reboot(command)
    while True:  # reboot(2) does not return for these commands
        time.sleep(1)


def parse_cmdline(text: str) -> dict[str, str]:
    """`a=b c d=e` -> {a: b, c: "", d: e} (the last occurrence wins, as in Pantavisor)."""
    args: dict[str, str] = {}
    for word in text.split():
        key, _, value = word.partition("=")
        args[key] = value
    return args


@dataclass
class Modules:
    """The kernel modules shipped in the initramfs (pvtwin-modules.json, written at build time)."""

    version: str
    table: dict[str, dict] = field(default_factory=dict)
    boot: list[str] = field(default_factory=list)
    watchdog: str = "i6300esb"  # the watchdog driver shipped (softdog with the cloud kernel)
    loaded: set[str] = field(default_factory=set)

    @classmethod
    def open(cls) -> Modules:
        version = os.uname().release
        try:
            with open(MODULES_INDEX.format(version=version)) as f:
                index = json.load(f)
        except FileNotFoundError:
            return cls(version)
        return cls(version, index["modules"], index["boot"], index.get("watchdog") or "i6300esb")

    def load(self, names: Iterable[str]) -> None:
        """Load modules and their dependencies, each after what it needs (already loaded is fine)."""
        for name in names:
            name = name.replace("-", "_")
            if name in self.loaded or name not in self.table:
                continue  # built in, or not shipped: the caller finds out when it uses it
            self.loaded.add(name)
            self.load(self.table[name]["depends"])
            path = f"/lib/modules/{self.version}/{self.table[name]['path']}"
            fd = os.open(path, os.O_RDONLY)
            try:
                if _libc.syscall(SYS_FINIT_MODULE, fd, b"", 0) != 0:
                    err = ctypes.get_errno()
                    if err != errno.EEXIST:
                        raise OSError(err, f"finit_module {name}: {os.strerror(err)}")
            finally:
                os.close(fd)


@dataclass
class GuestBoot:
    """What PID 1 knows after bring-up; handed to pvreal.device.guest_main."""

    pv_rev: str  # the revision GRUB booted (pv_rev= on the command line)
    pv_try: str  # the revision being tried, "" when none
    cmdline: dict[str, str]
    storage: str
    env_path: str
    modules: Modules

    @property
    def trying(self) -> bool:
        return self.pv_try != "" and self.pv_try == self.pv_rev

    def reboot(self) -> None:
        say("PVTWIN REBOOT")
        reboot(RB_AUTOBOOT)

    def poweroff(self) -> None:
        say("PVTWIN POWEROFF")
        reboot(RB_POWER_OFF)


def bring_up() -> GuestBoot:
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID)
    mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV)
    with open("/proc/cmdline") as f:
        raw = f.read().strip()
    args = parse_cmdline(raw)
    modules = Modules.open()
    modules.load(modules.boot)
    _wait_for(STORAGE_DEVICE, seconds=20)
    try:
        mount(STORAGE_DEVICE, STORAGE, "ext4")
    except OSError as error:
        if error.errno not in (errno.EROFS, errno.EACCES):
            raise
        # a write-protected disk: come up read-only so the device can still say what booted
        mount(STORAGE_DEVICE, STORAGE, "ext4", MS_RDONLY)
        say("PVTWIN STORAGE read-only")
    boot = GuestBoot(
        pv_rev=args.get("pv_rev", ""),
        pv_try=args.get("pv_try", ""),
        cmdline=args,
        storage=STORAGE,
        env_path=ENV_PATH,
        modules=modules,
    )
    say(f"PVTWIN BOOT pv_rev={boot.pv_rev} pv_try={boot.pv_try} cmdline={raw}")
    return boot


def _wait_for(path: str, *, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise FileNotFoundError(f"{path} did not appear within {seconds} s")
        time.sleep(0.02)


# ---- the boot chain test harness (replaced by pvreal.device for real runs) -------------------


def harness_actions(boot: GuestBoot) -> list[str] | None:
    """The actions asked for by the command line or the revision's harness.json, else None."""
    if "pvtwin.harness" in boot.cmdline:
        return [a for a in boot.cmdline["pvtwin.harness"].split(",") if a]
    path = f"{boot.storage}/trails/{boot.pv_rev}/.pv/harness.json"
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        return None
    text = spec.get("try" if boot.trying else "boot", "poweroff")
    return [a for a in text.split(",") if a]


def load_env(path: str) -> dict[str, str]:
    try:
        from pvreal.bootenv import FaithfulStore, grub
    except ImportError:  # the harness must still run from a bare initramfs
        return _minimal_decode(path)
    return FaithfulStore(path, grub()).load()


def save_env(path: str, env: dict[str, str]) -> None:
    try:
        from pvreal.bootenv import FaithfulStore, grub
    except ImportError:
        _minimal_save(path, env)
        return
    FaithfulStore(path, grub()).save(env)


def _minimal_decode(path: str) -> dict[str, str]:
    with open(path, "rb") as f:
        lines = f.read().decode().split("\n")
    return dict(
        line.split("=", 1) for line in lines[1:] if "=" in line and not line.startswith("#")
    )


def _minimal_save(path: str, env: dict[str, str]) -> None:
    header = "# GRUB Environment Block\n# WARNING: Do not edit this file by tools other than grub-editenv!!!\n"
    body = header + "".join(f"{k}={v}\n" for k, v in env.items())
    block = body.encode().ljust(1024, b"#")
    fd = os.open(path, os.O_RDWR | os.O_SYNC)  # in place, 1024 bytes: never sparse
    try:
        os.write(fd, block)
    finally:
        os.close(fd)


def commit(boot: GuestBoot) -> None:
    """Make the revision being tried the committed one: pv_rev=<try>, pv_try and pv_trying gone.

    Removing pv_trying as well avoids the stale-pv_trying trap (grub-qemu.md §5): a later try of
    the same number would otherwise be rolled back at once.
    """
    env = load_env(boot.env_path)
    if not boot.trying:
        say(f"PVTWIN COMMIT skipped: not trying (pv_rev={boot.pv_rev} pv_try={boot.pv_try})")
        return
    # What the commit writes, and that the latch goes with pv_try, are shared rules.
    from shared.engine import bootloader

    old_try = env.get(bootloader.PV_TRY, "")
    env = bootloader.env_after_set(env, pv_rev=boot.pv_try, pv_try="")
    latch = bootloader.latch_after_try_write(bootloader.latch_from_env(env), old_try, "")
    save_env(boot.env_path, bootloader.latch_to_env(env, latch))
    say(f"PVTWIN COMMIT pv_rev={boot.pv_try}")


def arm_watchdog(boot: GuestBoot, timeout: int) -> None:
    boot.modules.load([boot.modules.watchdog])
    _wait_for("/dev/watchdog", seconds=5)
    fd = os.open("/dev/watchdog", os.O_WRONLY)  # opening starts it
    fcntl.ioctl(fd, WDIOC_SETTIMEOUT, struct.pack("i", timeout))
    os.write(fd, b"\0")
    say(f"PVTWIN WATCHDOG armed timeout={timeout}")
    # fd stays open on purpose: closing without the magic 'V' keeps it running anyway


def run_harness(boot: GuestBoot, actions: list[str]) -> None:
    env = load_env(boot.env_path)
    shown = " ".join(f"{k}={env[k]}" for k in ("pv_rev", "pv_try", "pv_trying") if k in env)
    say(f"PVTWIN HARNESS actions={','.join(actions)} trying={int(boot.trying)} env=[{shown}]")
    for action in actions:
        name, _, arg = action.partition(":")
        if name == "commit":
            commit(boot)
        elif name == "reboot":
            boot.reboot()
        elif name == "poweroff":
            boot.poweroff()
        elif name == "panic":
            say("PVTWIN PANIC")
            os.sync()
            os._exit(1)  # PID 1 exits: "Attempted to kill init!", panic=N reboots
        elif name == "watchdog":
            arm_watchdog(boot, int(arg or 2))
        elif name == "hang":
            say("PVTWIN HANG")
            while True:
                time.sleep(3600)
        elif name == "sleep":
            time.sleep(float(arg or 1))
        else:
            say(f"PVTWIN ERROR unknown harness action {action!r}")
    boot.poweroff()


def hand_over(boot: GuestBoot) -> None:
    actions = harness_actions(boot)
    if actions is None:
        # find_spec, not try/except ImportError: a daemon that exists but fails to import must
        # show its traceback (and reset), not silently fall back to the harness.
        daemon = importlib.util.find_spec("pvreal.device") if _has_pvreal() else None
        guest_main = (
            getattr(importlib.import_module("pvreal.device"), "guest_main", None)
            if daemon
            else None
        )
        if guest_main is not None:
            say("PVTWIN DAEMON pvreal.device.guest_main")
            lean_pyroute2()
            # imported here, not inside guest_main, for the boot-time breakdown's "imports" mark
            importlib.import_module("pvreal.device.guest")
            say("PVTWIN DAEMON imported")
            code = guest_main(boot)
            boot.poweroff() if code == 0 else boot.reboot()
        actions = ["poweroff"]
    run_harness(boot, actions)


# What the daemon takes from pyroute2's top level (pvreal.netns, pvreal.device.machine): the
# attribute and the submodule it lives in.
PYROUTE2_NAMES = {
    "IPRoute": "pyroute2.iproute",
    "NetNS": "pyroute2.iproute",
    "NetlinkError": "pyroute2.netlink.exceptions",
    "netns": "pyroute2.netns",
}


def lean_pyroute2() -> bool:
    """`import pyroute2` loads only what the daemon uses. pyroute2's `__init__` imports its whole
    library (IPDB, NDB, conntrack, ipset, wireguard, nl80211, plan9 ...): under TCG that is most
    of a second of every boot. Its socket module also imports `unittest` for `unittest.mock`, so
    `unittest` gets the same treatment (its `__init__` loads the test runner, argparse and
    gettext: 76 ms of a boot under TCG, measured with -X importtime)."""
    lean_package("unittest", {})
    return lean_package("pyroute2", PYROUTE2_NAMES)


def lean_package(package_name: str, names: dict[str, str]) -> bool:
    """Register `package_name` without running its `__init__` (its `__path__` still finds every
    submodule). A name of `names` is imported from its submodule when first asked for, a
    submodule's name imports that submodule, and any other name runs the real `__init__` first,
    so nothing the package offers goes missing. Nothing is imported here: the cost stays where
    the daemon first uses the package. False (and nothing done) when it is absent or loaded."""
    if package_name in sys.modules:
        return False
    spec = importlib.util.find_spec(package_name)
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return False
    package = importlib.util.module_from_spec(spec)  # __path__ set, __init__ not run
    loader = spec.loader
    whole: list[bool] = []

    def __getattr__(name: str) -> object:  # PEP 562: only for names not set on the package yet
        module = names.get(name)
        if module is None and not name.startswith("__"):
            # `from pyroute2 import config` asks for the attribute before the submodule
            with contextlib.suppress(ImportError):
                if importlib.util.find_spec(f"{package_name}.{name}") is not None:
                    return importlib.import_module(f"{package_name}.{name}")
        if module is None:
            if whole or name.startswith("__"):
                raise AttributeError(f"module {package_name!r} has no attribute {name!r}")
            whole.append(True)
            loader.exec_module(package)  # the real __init__: every name it defines
            return getattr(package, name)
        found = importlib.import_module(module)
        value = found if module.endswith("." + name) else getattr(found, name)
        setattr(package, name, value)
        return value

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[package_name] = package
    return True


def _has_pvreal() -> bool:
    return importlib.util.find_spec("pvreal") is not None


def main() -> None:
    try:
        hand_over(bring_up())
    except BaseException:  # PID 1 must not just die: say why, then reset like a crashed device
        traceback.print_exc()
        say("PVTWIN ERROR init failed, rebooting")
        reboot(RB_AUTOBOOT)
