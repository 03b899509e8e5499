"""What a container-only update costs on the real device (`pvreal bench`, as root).

1. LOCAL_RUN latency: from `POST /commands LOCAL_RUN` to the changed container STARTED again
   (a new init pid), objects and state already uploaded; median over `--runs` updates.
2. Write amplification of an app-only update: bytes the daemon process caused to be written to
   storage (`write_bytes` of /proc/<daemon pid>/io, which counts what the process sends to the
   block layer, page-cache writeback included) during upload + LOCAL_RUN until UPDATED, divided
   by the size of the changed objects. The storage folder must be on a block device (not tmpfs),
   which is why the default work folder is under /var/tmp.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pvreal import tools
from pvreal.ctrl.client import CtrlClient, CtrlError
from pvreal.device.install import install_factory
from pvreal.objectstore import ObjectStore, is_sha
from pvreal.rev.build import build_bsp, build_container, load_state, save_state
from pvreal.rootfs import busybox_rootfs
from shared.engine.progress import Status
from shared.errors import PvError

TARGET_RUN_S = 1.0
TARGET_AMPLIFICATION = 1.1
INIT = """#!/bin/sh
trap 'exit 0' TERM
while :; do sleep 1 & wait $!; done
"""
GROUPS = [
    {"name": "app", "status_goal": "STARTED", "restart_policy": "container", "timeout": 10},
]


def _rootfs(dest: Path, tag: str) -> Path:
    busybox_rootfs(dest, INIT)
    (dest / "etc" / "version").write_text(tag + "\n")
    # some payload of its own, so the changed object has the size of a small app
    (dest / "etc" / "payload").write_bytes(os.urandom(2 << 20))
    return dest


def _state(work: Path, objects: ObjectStore, name: str, app2_tag: str) -> Path:
    path = work / f"{name}.json"
    state = load_state(path)
    kernel, initrd = work / "kernel", work / "initrd"
    if not kernel.exists():
        kernel.write_bytes(b"bench kernel\n")
        initrd.write_bytes(b"bench initrd\n")
    state.update(build_bsp(kernel=kernel, initrd=initrd, objects=objects))
    for cname, tag in (("app1", "base"), ("app2", app2_tag)):
        rootfs = work / f"rootfs-{tag}"
        if not rootfs.exists():
            _rootfs(rootfs, tag)
        state.update(
            build_container(cname, rootfs=rootfs, oci_image=None, objects=objects, group="app")
        )
    state["groups.json"] = GROUPS
    save_state(path, state)
    return path


def _write_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise PvError("no write_bytes in /proc/<pid>/io")


def _shas(path: Path) -> set[str]:
    return {v for k, v in json.loads(path.read_text()).items() if k != "#spec" and is_sha(v)}


def _upload(client: CtrlClient, objects: ObjectStore, state: Path, rev: str) -> None:
    for sha in sorted(_shas(state)):
        answer = client.put_object(sha, objects.path(sha))
        if not answer.ok:
            raise PvError(f"upload {sha}: {answer.status} {answer.error}")
    answer = client.put_step(rev, state.read_bytes())
    if not answer.ok:
        raise PvError(f"{rev}: {answer.status} {answer.error}")


def _pid(client: CtrlClient, name: str) -> tuple[int | None, str]:
    for c in client.containers():
        if c["name"] == name:
            return c.get("pid"), c["status"]
    return None, "NONE"


def _wait_settled(client: CtrlClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            s = client.status()
            cs = s.get("containers", {}).values()
            if s.get("phase") == "IDLE" and cs and all(c["status"] == "STARTED" for c in cs):
                return
        except CtrlError:
            pass
        time.sleep(0.02)
    raise PvError("the bench device did not settle")


def run_bench(work: Path, runs: int) -> dict[str, Any]:
    objects = ObjectStore(work / "objects")
    base = _state(work, objects, "base", "v0")
    updates = [_state(work, objects, f"u{i}", f"v{i}") for i in range(1, runs + 2)]
    storage, socket = work / "storage", work / "pv-ctrl"
    install_factory(storage, base, objects.dir, "uboot", "hardened")
    argv = [sys.executable, "-m", "pvreal.device", "run", "--storage", str(storage),
            "--socket", str(socket), "--run-dir", str(work / "run"),
            "--config", "PV_UPDATER_COMMIT_DELAY=0.2"]
    log = open(work / "daemon.log", "ab")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(argv, stdout=log, stderr=log)
    client = CtrlClient(socket)
    try:
        _wait_settled(client)
        # 1. write amplification of one app-only update (the first one)
        changed = _shas(updates[0]) - _shas(base)
        changed_size = sum(objects.size(s) for s in changed)
        written0 = _write_bytes(proc.pid)
        _upload(client, objects, updates[0], "locals/u1")
        if not client.command("LOCAL_RUN", "locals/u1").ok:
            raise PvError("LOCAL_RUN refused")
        record = client.wait("locals/u1", (Status.UPDATED,), 60)
        if not record or record["status"] != Status.UPDATED:
            raise PvError(f"update did not finish: {record}")
        os.sync()
        written = _write_bytes(proc.pid) - written0
        # 2. LOCAL_RUN latency, objects already uploaded
        latencies = []
        for i, state in enumerate(updates[1:], start=2):
            rev = f"locals/u{i}"
            _upload(client, objects, state, rev)
            _wait_settled(client)
            old_pid, _ = _pid(client, "app2")
            began = time.monotonic()
            if not client.command("LOCAL_RUN", rev).ok:
                raise PvError("LOCAL_RUN refused")
            while True:
                pid, status = _pid(client, "app2")
                if pid is not None and pid != old_pid and status == "STARTED":
                    break
                if time.monotonic() - began > 30:
                    raise PvError("the new container never started")
                time.sleep(0.002)
            latencies.append(time.monotonic() - began)
            client.wait(rev, (Status.UPDATED,), 60)
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    return {
        "local_run_to_started_s": {
            "median": statistics.median(latencies),
            "min": min(latencies),
            "max": max(latencies),
            "runs": len(latencies),
            "target": TARGET_RUN_S,
        },
        "app_only_update_writes": {
            "bytes_written": written,
            "changed_objects_bytes": changed_size,
            "ratio": written / changed_size,
            "target": TARGET_AMPLIFICATION,
            "measured_by": "/proc/<daemon pid>/io write_bytes (upload + LOCAL_RUN to UPDATED)",
        },
    }


def bench(runs: int, workdir: Path | None = None, *, keep: bool = False) -> dict[str, Any]:
    """run_bench in `workdir` (default: a new folder in /var/tmp, on a block device), removed
    afterwards unless `keep`; needs root and runc, mksquashfs and busybox."""
    if os.geteuid() != 0:
        raise PvError("pvreal bench needs root (mounts, runc)")
    for tool in ("runc", "mksquashfs", "busybox"):
        tools.require(tool)
    if runs < 1:
        raise PvError("--runs must be at least 1", key="--runs")
    work = workdir or Path(tempfile.mkdtemp(prefix="pvreal-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run_bench(work, runs)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
