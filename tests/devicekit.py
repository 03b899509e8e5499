"""Helpers for the real device tests (test_device_*.py) and `pvreal bench`-like runs: build
revisions from a busybox rootfs, run `pvreal device run` as a subprocess, check leftovers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from realkit import POLITE_INIT, busybox_rootfs, need_root, need_tools

from pvreal.cli import main as pvreal_main
from pvreal.ctrl.client import CtrlClient, CtrlError
from pvreal.device.executor import storage_prefix

REPO = Path(__file__).resolve().parent.parent
EXIT_AT_ONCE_INIT = "#!/bin/sh\necho 'init: giving up at once'\nexit 3\n"


def need_device() -> None:
    need_root()
    need_tools("runc", "mksquashfs", "busybox", "mount", "nsenter")


def groups_json(timeout: int) -> list[dict[str, Any]]:
    """Two groups without auto-recovery or stable windows, so outcomes are quick."""
    return [
        {"name": "platform", "status_goal": "STARTED", "restart_policy": "system",
         "timeout": timeout},
        {"name": "app", "status_goal": "STARTED", "restart_policy": "container",
         "timeout": timeout},
    ]


class Revisions:
    """States sharing one objects folder; every container a busybox rootfs with a marker."""

    def __init__(self, root: Path, group_timeout: int = 3):
        self.root = root
        self.objects = root / "objects"
        self.group_timeout = group_timeout
        root.mkdir(parents=True, exist_ok=True)
        self.kernel = root / "kernel.img"
        self.initrd = root / "initrd.img"
        self.kernel.write_bytes(b"pvtwin test kernel\n" * 8)
        self.initrd.write_bytes(b"pvtwin test initrd\n" * 8)
        self._base = busybox_rootfs(root / "rootfs-base")

    def rootfs(self, tag: str, init: str = POLITE_INIT) -> Path:
        dest = self.root / f"rootfs-{tag}"
        if not dest.exists():
            shutil.copytree(self._base, dest, symlinks=True)
            (dest / "etc" / "version").write_text(tag + "\n")
            (dest / "sbin" / "init").write_text(init)
        return dest

    def state(self, name: str, containers: dict[str, dict[str, Any]]) -> Path:
        """containers: name -> {"tag": str, "init": str?, "goal": str?, "group": str?}."""
        path = self.root / f"{name}.json"
        path.unlink(missing_ok=True)
        _cli("rev", "add-bsp", str(path), "--kernel", str(self.kernel), "--initrd",
             str(self.initrd), "--objects", str(self.objects))
        for cname, spec in containers.items():
            args = ["rev", "add-container", str(path), cname, "--objects", str(self.objects),
                    "--rootfs", str(self.rootfs(spec["tag"], spec.get("init", POLITE_INIT))),
                    "--group", spec.get("group", "app")]
            if "goal" in spec:
                args += ["--status-goal", spec["goal"]]
            _cli(*args)
        doc = json.loads(path.read_text())
        doc["groups.json"] = groups_json(self.group_timeout)
        path.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))
        return path


def _cli(*args: str) -> None:
    rc = pvreal_main(list(args))
    if rc != 0:
        raise AssertionError(f"pvreal {' '.join(args)} exited {rc}")


class Daemon:
    """`python -m pvreal.device run` on a storage folder, with its socket and run dir."""

    def __init__(self, base: Path, *, config: dict[str, Any] | None = None,
                 network: bool = True, bootloader: str = "uboot", ordering: str = "hardened",
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.base = base
        self.env = {**os.environ, **(env or {})}  # e.g. pv_quickboot, read as Pantavisor does
        self.storage = base / "storage"
        self.socket = base / "pv-ctrl"
        self.run_dir = base / "run"
        self.log = base / "daemon.log"
        self.config = {"PV_UPDATER_COMMIT_DELAY": 0.5, **(config or {})}
        self.network = network
        self.extra_args = list(extra_args)  # e.g. --truststore DIR --secureboot-mode strict
        self.bootloader, self.ordering = bootloader, ordering
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = CtrlClient(self.socket, timeout=30)
        self.prefix = storage_prefix(self.storage)
        self.ctrl_dir = Path("/run/pvtwin") / self.prefix / "ctrl"  # the containers' sockets

    def init(self, state: Path, objects: Path) -> None:
        _cli("device", "init", "--storage", str(self.storage), "--state", str(state),
             "--objects", str(objects), "--bootloader", self.bootloader,
             "--ordering", self.ordering)

    def start(self, timeout: float = 60.0) -> None:
        argv = [sys.executable, "-m", "pvreal.device", "run", "--storage", str(self.storage),
                "--socket", str(self.socket), "--run-dir", str(self.run_dir),
                "--bootloader", self.bootloader, "--ordering", self.ordering]
        for key, value in self.config.items():
            argv += ["--config", f"{key}={value}"]
        if not self.network:
            argv.append("--no-network")
        argv += self.extra_args
        self.socket.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=REPO,
                                         start_new_session=True, env=self.env)
        self.wait_settled(timeout)

    def status(self) -> dict[str, Any]:
        return self.client.status()

    def wait_settled(self, timeout: float = 60.0) -> dict[str, Any]:
        """Booted, no update in flight, every container at its goal (or the device stopped)."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.tail()}")
            try:
                last = self.status()
            except CtrlError:
                time.sleep(0.05)
                continue
            containers = last.get("containers", {}).values()
            if (last.get("phase") == "IDLE" and last.get("update") is None and containers
                    and all(c["status"] in ("STARTED", "READY", "MOUNTED") for c in containers)):
                return last
            time.sleep(0.05)
        raise AssertionError(f"device did not settle: {last}\n{self.tail()}")

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def leftovers(self) -> list[str]:
        """runc containers, network namespaces and mounts of this device still present."""
        found = []
        runc_root = self.run_dir / "containers" / "runc"
        if runc_root.is_dir():
            out = subprocess.run(["runc", "--root", str(runc_root), "list", "-q"],
                                 capture_output=True, text=True, check=False).stdout.split()
            found += [f"runc:{cid}" for cid in out]
        netns_dir = Path("/var/run/netns")
        if netns_dir.is_dir():
            found += [f"netns:{n}" for n in os.listdir(netns_dir) if n.startswith(self.prefix)]
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4]
                if point.startswith(str(self.base)):
                    found.append(f"mount:{point}")
        return found


def started_device(base: Path, *, network: bool = False) -> tuple[Revisions, Daemon]:
    """A daemon on base/dev booted into factory revision `f0` (one container, `app1`), settled;
    its revisions under base/revs. The caller stops it."""
    need_device()
    revs = Revisions(base / "revs", group_timeout=3)
    d = Daemon(base / "dev", network=network)
    d.init(revs.state("f0", {"app1": {"tag": "a1"}}), revs.objects)
    d.start()
    return revs, d


def tree_digest(root: Path, skip: tuple[str, ...] = ("logs",)) -> dict[str, str]:
    """Every path under root with its content hash (or link target): 'nothing changed' checks."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d not in skip]
        dirnames.sort()
        for name in sorted(dirnames):
            out[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = "dir"
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = "-> " + os.readlink(path)
            else:
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def nsenter_net(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", *argv],
                          capture_output=True, text=True, timeout=20, check=False)


__all__ = ["EXIT_AT_ONCE_INIT", "Daemon", "Revisions", "need_device", "nsenter_net", "started_device",
           "tree_digest", "pytest"]
