"""Containers run by runc: an OCI bundle per container, a runc state root of our own.

Pantavisor's containers are LXC containers (`type: lxc`) whose run.json names an LXC config file
(`config`, usually `lxc.container.conf`). pvtwin runs them with runc instead and reads what it
needs from that LXC config (see `LxcSettings`):

    lxc.init.cmd                                  the container's init (default /sbin/init)
    lxc.init.cwd, lxc.environment                 working folder, environment
    lxc.cgroup.memory.limit_in_bytes | lxc.cgroup2.memory.max     memory limit
    lxc.cgroup.pids.max | lxc.cgroup2.pids.max                     pids limit
    lxc.cap.drop                                  capabilities removed from the default set

So cgroup limits are asked for the way a Pantavisor revision would ask LXC, no new run.json key.

Stop follows Pantavisor: SIGTERM, a grace period, then SIGKILL (the grace is a fixed 5 s in
Pantavisor, pvtwin's `PVTWIN_STOP_GRACE` here). An init that is already gone is not signalled and
not waited for. Exit is detected by polling /proc/<pid> (the init pid and its start time, so a
recycled pid is not mistaken for it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvreal import tools
from pvreal.durable import atomic_write
from pvreal.mounts import VolumeMount
from shared.errors import PvError

DEFAULT_INIT = ("/sbin/init",)
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_GRACE_S = 5.0  # Pantavisor forces a stop after 5 s
CTRL_SOCKET_IN_CONTAINER = "/pantavisor/pv-ctrl"
POLL_S = 0.005

# Docker's default capability set, NET_RAW included (ping needs it).
DEFAULT_CAPS = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
)


class RuncError(PvError):
    """runc refused or failed; `source` is the container id."""


# --------------------------------------------------------------------------------------------
# What the LXC config asks for


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)[bB]?\s*$")


def _parse_size(text: str, key: str) -> int:
    match = _SIZE_RE.match(text)
    if not match:
        raise RuncError(f"not a size: {text!r}", key=key)
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
    return int(match.group(1)) * factor


@dataclass(frozen=True, slots=True)
class LxcSettings:
    init: tuple[str, ...] = DEFAULT_INIT
    cwd: str = "/"
    env: tuple[str, ...] = (DEFAULT_PATH,)
    memory_limit: int | None = None
    pids_limit: int | None = None
    cap_drop: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str, *, source: str = "lxc.container.conf") -> LxcSettings:
        values: dict[str, Any] = {}
        env: list[str] = [DEFAULT_PATH]
        drops: set[str] = set()
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = (part.strip() for part in line.partition("="))
            if key == "lxc.init.cmd":
                try:  # LXC splits this value honouring quotes, as a shell would
                    values["init"] = tuple(shlex.split(value))
                except ValueError as exc:
                    raise RuncError(f"unbalanced quotes: {exc}", source=source, key=key) from None
            elif key == "lxc.init.cwd":
                values["cwd"] = value
            elif key == "lxc.environment":
                if value.startswith("PATH="):
                    env = [e for e in env if not e.startswith("PATH=")]
                env.append(value)
            elif key in ("lxc.cgroup.memory.limit_in_bytes", "lxc.cgroup2.memory.max"):
                if value != "max":
                    values["memory_limit"] = _parse_size(value, key)
            elif key in ("lxc.cgroup.pids.max", "lxc.cgroup2.pids.max"):
                if value != "max":
                    try:
                        values["pids_limit"] = int(value)
                    except ValueError:
                        raise RuncError(
                            f"not a number: {value!r}", source=source, key=key
                        ) from None
            elif key == "lxc.cap.drop":
                drops.update("CAP_" + c.upper() for c in value.split())
        return cls(env=tuple(env), cap_drop=frozenset(drops), **values)


def lxc_config_text(settings: LxcSettings, name: str) -> str:
    """The LXC config `add-container` writes: what Pantavisor's LXC would need to run it."""
    lines = [
        f"lxc.uts.name = {name}",
        "lxc.init.cmd = " + shlex.join(settings.init),
    ]
    if settings.cwd != "/":
        lines.append(f"lxc.init.cwd = {settings.cwd}")
    lines += [f"lxc.environment = {e}" for e in settings.env]
    if settings.memory_limit is not None:
        lines.append(f"lxc.cgroup.memory.limit_in_bytes = {settings.memory_limit}")
    if settings.pids_limit is not None:
        lines.append(f"lxc.cgroup.pids.max = {settings.pids_limit}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The bundle


def bundle_config(
    *,
    name: str,
    rootfs: Path,
    settings: LxcSettings,
    netns_path: Path | None = None,
    ctrl_socket: Path | None = None,
    volumes: Sequence[VolumeMount] = (),
    cgroups_path: str | None = None,
    mgmt: bool = False,
) -> dict[str, Any]:
    """config.json for one container: hostname = name, its own pid/ipc/uts/mount namespaces,
    the given network namespace, /pantavisor/pv-ctrl, volumes and cgroup limits."""
    caps = sorted(set(DEFAULT_CAPS) - settings.cap_drop)
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/run",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=755"],
        },
    ]
    if ctrl_socket is not None:
        mounts.append(
            {
                "destination": CTRL_SOCKET_IN_CONTAINER,
                "type": "bind",
                "source": str(ctrl_socket),
                "options": ["bind", "rw"],
            }
        )
    for volume in volumes:
        if volume.source is None:
            mounts.append(
                {
                    "destination": volume.destination,
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "nodev", "mode=755"],
                }
            )
        else:
            mounts.append(
                {
                    "destination": volume.destination,
                    "type": "bind",
                    "source": str(volume.source),
                    "options": ["rbind", "rw"],
                }
            )
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    namespaces.append({"type": "network", **({"path": str(netns_path)} if netns_path else {})})
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if settings.memory_limit is not None:
        resources["memory"] = {"limit": settings.memory_limit}
    if settings.pids_limit is not None:
        resources["pids"] = {"limit": settings.pids_limit}
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "resources": resources,
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    }
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(settings.init),
            "env": list(settings.env),
            "cwd": settings.cwd,
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": not mgmt,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": name,
        "mounts": mounts,
        "linux": linux,
        "annotations": {"org.pantavisor.container": name},
    }


def write_bundle(bundle_dir: Path, config: Mapping[str, Any]) -> Path:
    bundle_dir.mkdir(parents=True, exist_ok=True)
    path = bundle_dir / "config.json"
    atomic_write(path, json.dumps(config, indent=1, sort_keys=True).encode())
    return path


# --------------------------------------------------------------------------------------------
# Processes


@dataclass(frozen=True, slots=True)
class InitProcess:
    """A container's init as seen from the host: pid plus start time (guards pid reuse)."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> InitProcess:
        return cls(pid, _start_time(pid) or 0)

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start_time and _proc_state(self.pid) not in (
            "Z",
            "X",
            None,
        )


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from "state" on (comm may hold spaces)


def _proc_state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22 of stat: starttime


@dataclass(frozen=True, slots=True)
class StopResult:
    how: str  # "exited" (left within the grace period), "killed" (SIGKILL), "gone" (already dead)
    seconds: float


@dataclass
class Runc:
    """runc with a state root of our own (`runc --root`). Container ids are ours to make unique."""

    root: Path
    binary: str = "runc"
    started: dict[str, InitProcess] = field(default_factory=dict)

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *args]

    def create(self, cid: str, bundle: Path, *, console_log: Path | None = None) -> InitProcess:
        """`runc create`: the init is set up and waits for `start`. Its stdout/stderr go to
        `console_log` (the container keeps them open, so never a pipe we would wait on);
        runc's own complaints go to `<bundle>/runc.log`, quoted in the error."""
        return self._spawn(("create",), cid, bundle, console_log)

    def run(self, cid: str, bundle: Path, *, console_log: Path | None = None) -> InitProcess:
        """`runc run --detach`: `create` and `start` in one runc process (one Go start-up instead
        of two, which counts under QEMU/TCG); the same console, log and errors as `create`."""
        return self._spawn(("run", "--detach"), cid, bundle, console_log)

    def _spawn(
        self, verb: tuple[str, ...], cid: str, bundle: Path, console_log: Path | None
    ) -> InitProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        pid_file = bundle / "init.pid"
        pid_file.unlink(missing_ok=True)
        runc_log = bundle / "runc.log"
        runc_log.unlink(missing_ok=True)
        log_file = None
        if console_log is not None:
            console_log.parent.mkdir(parents=True, exist_ok=True)
            log_file = open(console_log, "ab")  # noqa: SIM115 - handed to the child, closed below
        out = log_file if log_file is not None else subprocess.DEVNULL
        argv = [self.binary, "--root", str(self.root), "--log", str(runc_log), *verb]
        try:
            done = subprocess.run(
                [*argv, "--bundle", str(bundle), "--pid-file", str(pid_file), cid],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                timeout=30,
                check=False,
            )
        finally:
            if log_file is not None:
                log_file.close()
        if done.returncode != 0:
            raise RuncError(f"runc {verb[0]} failed: {_tail(runc_log)}", source=cid)
        init = InitProcess.of(int(pid_file.read_text().strip()))
        self.started[cid] = init
        return init

    def start(self, cid: str) -> None:
        self._run("start", cid)

    def state(self, cid: str) -> dict[str, Any] | None:
        """runc's view (`status`: created|running|stopped|paused), None if runc does not know it."""
        try:
            return json.loads(tools.run(self._argv("state", cid), timeout=10))
        except tools.ToolError:
            return None

    def kill(self, cid: str, sig: str = "TERM") -> None:
        self._run("kill", cid, sig)

    def known(self, cid: str) -> bool:
        """Whether runc holds state for `cid` under our root (its `<root>/<id>` folder): checked
        without starting a runc process (slow under QEMU/TCG)."""
        return (self.root / cid).is_dir()

    def delete(self, cid: str, *, force: bool = False) -> None:
        self._run("delete", *(["--force"] if force else []), cid)
        self.started.pop(cid, None)

    def list_ids(self) -> list[str]:
        """Containers runc knows under our root (`runc list` prints `null` when there are none)."""
        if not self.root.is_dir():
            return []
        listed = json.loads(tools.run(self._argv("list", "--format", "json"), timeout=10) or "null")
        return sorted(entry["id"] for entry in listed or [])

    def init_of(self, cid: str) -> InitProcess | None:
        if cid in self.started:
            return self.started[cid]
        st = self.state(cid)
        if st and st.get("pid"):
            return InitProcess.of(int(st["pid"]))
        return None

    def exited(self, cid: str) -> bool:
        init = self.init_of(cid)
        return init is None or not init.alive()

    def wait_exit(self, cid: str, timeout: float) -> bool:
        """Poll for the init to die; True when it did within `timeout` seconds."""
        init = self.init_of(cid)
        deadline = time.monotonic() + timeout
        while init is not None and init.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def stop(self, cid: str, *, grace: float = DEFAULT_GRACE_S) -> StopResult:
        """SIGTERM, wait `grace` seconds, then SIGKILL; finally delete runc's state."""
        began = time.monotonic()
        how = "gone"
        if not self.exited(cid):
            how = "exited"
            self._kill_quietly(cid, "TERM")
            if not self.wait_exit(cid, grace):
                how = "killed"
                self._kill_quietly(cid, "KILL")
                if not self.wait_exit(cid, 5.0):
                    raise RuncError("init survived SIGKILL", source=cid)
        try:
            self.delete(cid)
        except RuncError:
            self.delete(cid, force=True)
        return StopResult(how, time.monotonic() - began)

    def _kill_quietly(self, cid: str, sig: str) -> None:
        """Signal the init; it may exit between our check and runc's, which is fine."""
        init = self.init_of(cid)
        if init is not None and init.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(init.pid, getattr(signal, "SIG" + sig))

    def _run(self, *args: str) -> str:
        try:
            return tools.run(self._argv(*args), timeout=30)
        except tools.ToolError as exc:
            raise RuncError(exc.message, source=args[-1]) from None


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_bytes()[-limit:].decode(errors="replace").strip()
    except OSError:
        return ""
