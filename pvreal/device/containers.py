"""Engine container commands → real containers: mounts (pvreal.mounts), a network namespace
(pvreal.netns), a pv-ctrl socket of its own, an OCI bundle run by runc (pvreal.runc).

The engine only says "start these" and "stop these"; it learns what happened from events:
`ContainerMounted` (goal MOUNTED: volumes only, nothing started), `ContainerStarted` (the init
runs), `ContainerExited` (the init died, or the start failed). A watcher thread polls each init
(pid + start time, so a recycled pid is not mistaken for it) and reports exits through `emit`.
A deliberate stop is forgotten before it is signalled, so it is never reported as an exit.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pvreal.mounts import LinuxMountOps, MountedContainer, MountOps, mount_container
from pvreal.runc import InitProcess, LxcSettings, Runc, bundle_config, write_bundle
from pvreal.storage import Storage
from shared.engine.events import ContainerExited, ContainerMounted, ContainerStarted, Event
from shared.errors import PvError

if TYPE_CHECKING:
    from pvreal.netns import ContainerNet, DeviceNetwork
    from shared.state import Container

log = logging.getLogger(__name__)
WATCH_INTERVAL_S = 0.02


class Closable(Protocol):
    def close(self) -> None: ...


# (container name, mgmt role) -> the socket path to bind-mount and what closes it
CtrlOpener = Callable[[str, bool], tuple[Path, Closable]]


@dataclass
class Running:
    """One container the runner has mounted (and maybe started)."""

    name: str
    rev: str
    cid: str
    mounted: MountedContainer
    net: ContainerNet | None = None
    init: InitProcess | None = None
    started_at: float = field(default_factory=time.monotonic)
    ctrl: Closable | None = None

    def info(self) -> dict[str, Any]:
        return {
            "rev": self.rev,
            "pid": self.init.pid if self.init else None,
            "uptime": round(time.monotonic() - self.started_at, 3),
            "address": str(self.net.address) if self.net else None,
            "netns": self.net.netns_name if self.net else None,
        }


class ContainerRunner:
    """Starts, stops and watches the containers of one device."""

    def __init__(
        self,
        storage: Storage,
        run_dir: Path,
        prefix: str,
        emit: Callable[[Event], None],
        *,
        network: DeviceNetwork | None = None,
        ctrl_opener: CtrlOpener | None = None,
        mount_ops: MountOps | None = None,
    ):
        self.storage = storage
        self.run_dir = Path(run_dir)
        self.prefix = prefix
        self.emit = emit
        self.network = network
        self.ctrl_opener = ctrl_opener
        self.ops = mount_ops or LinuxMountOps()
        self.runc = Runc(self.run_dir / "runc")
        self._lock = threading.Lock()
        self._running: dict[str, Running] = {}
        self._stop_watch = threading.Event()
        self._watcher: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle of the runner

    def cleanup_leftovers(self) -> list[str]:
        """After a crash of an earlier daemon: delete every runc container of ours."""
        removed = []
        with contextlib.suppress(PvError):
            for cid in self.runc.list_ids():
                with contextlib.suppress(PvError):
                    self.runc.delete(cid, force=True)
                    removed.append(cid)
        return removed

    def start_watching(self) -> None:
        if self._watcher is None:
            self._stop_watch.clear()
            self._watcher = threading.Thread(target=self._watch, name="pv-watch", daemon=True)
            self._watcher.start()

    def stop_watching(self) -> None:
        self._stop_watch.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None

    # ------------------------------------------------------------------ start / stop

    def start(self, rev: str, spec: Container) -> Event:
        """Mount and (unless the goal is MOUNTED) start one container; the event says how far
        it got. A failure is an exit: the engine decides what that means."""
        name = spec.name
        self._forget(name)  # a restart (auto-recovery) replaces the old instance
        try:
            mounted = mount_container(self.ops, self.storage, rev, name, spec.run, self.run_dir)
        except (PvError, OSError) as exc:
            log.warning("%s: mount failed: %s", name, exc)
            return ContainerExited(name, 0.0, -1)
        running = Running(name, rev, f"{self.prefix}-{name}", mounted)
        if str(spec.status_goal) == "MOUNTED":
            with self._lock:
                self._running[name] = running
            return ContainerMounted(name)
        try:
            self._launch(rev, spec, running)
        except (PvError, OSError) as exc:
            log.warning("%s: start failed: %s", name, exc)
            self._teardown(running, grace=0.0)
            return ContainerExited(name, 0.0, -1)
        with self._lock:
            self._running[name] = running
        return ContainerStarted(name)

    def _launch(self, rev: str, spec: Container, running: Running) -> None:
        name = spec.name
        conf_name = spec.config or "lxc.container.conf"
        conf = self.storage.trail_dir(rev) / name / conf_name
        settings = LxcSettings.parse(conf.read_text(), source=str(conf))
        if self.network is not None:
            running.net = self.network.attach(name)
        socket_path = None
        if self.ctrl_opener is not None:
            socket_path, running.ctrl = self.ctrl_opener(name, "mgmt" in spec.roles)
        bundle = self.run_dir / name / "bundle"
        config = bundle_config(
            name=name,
            rootfs=running.mounted.rootfs,
            settings=settings,
            netns_path=running.net.netns_path if running.net else None,
            ctrl_socket=socket_path,
            volumes=running.mounted.volumes,
            mgmt="mgmt" in spec.roles,
        )
        write_bundle(bundle, config)
        console = self.storage.log_dir(rev, name) / "console.log"
        if self.runc.known(running.cid):
            with contextlib.suppress(PvError):
                self.runc.delete(running.cid, force=True)  # a stale one of the same id
        running.init = self.runc.run(running.cid, bundle, console_log=console)
        running.started_at = time.monotonic()
        log.info("%s: started, runc id %s, pid %d, netns %s", name, running.cid,
                 running.init.pid, running.net.netns_name if running.net else "(the daemon's)")

    def stop(self, names: Iterable[str], grace: float) -> tuple[str, ...]:
        """Lenient stop (SIGTERM, `grace` s, SIGKILL), then unmount; in parallel."""
        doomed = [r for r in (self._forget(n) for n in names) if r is not None]
        if doomed:
            with ThreadPoolExecutor(max_workers=len(doomed)) as pool:
                list(pool.map(lambda r: self._teardown(r, grace), doomed))
        return tuple(r.name for r in doomed)

    def stop_all(self, grace: float) -> tuple[str, ...]:
        with self._lock:
            names = list(self._running)
        return self.stop(names, grace)

    def _forget(self, name: str) -> Running | None:
        with self._lock:
            return self._running.pop(name, None)

    def _teardown(self, running: Running, grace: float) -> None:
        try:
            if running.init is not None or running.cid in self.runc.started:
                # runc.stop skips the grace when the init is already gone
                result = self.runc.stop(running.cid, grace=grace)
                log.info("%s: stopped: %s after %.2f s (grace %.1f s)", running.name,
                         result.how, result.seconds, grace)
        except PvError as exc:
            log.warning("%s: stop: %s", running.name, exc)
            with contextlib.suppress(PvError):
                self.runc.delete(running.cid, force=True)
        if running.ctrl is not None:
            running.ctrl.close()
        if running.net is not None and self.network is not None:
            try:
                self.network.detach(running.name)
            except Exception as exc:  # pyroute2 raises its own netlink errors
                log.warning("%s: network detach: %s", running.name, exc)
        try:
            running.mounted.unmount()
        except PvError as exc:
            log.warning("%s: unmount: %s", running.name, exc)
        shutil.rmtree(self.run_dir / running.name, ignore_errors=True)

    # ------------------------------------------------------------------ queries and watching

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: r.info() for name, r in self._running.items()}

    def pid_of(self, name: str) -> int | None:
        with self._lock:
            r = self._running.get(name)
            return r.init.pid if r is not None and r.init is not None else None

    def _watch(self) -> None:
        while not self._stop_watch.wait(WATCH_INTERVAL_S):
            with self._lock:
                candidates = [r for r in self._running.values() if r.init is not None]
            for r in candidates:
                if r.init is not None and not r.init.alive():
                    with self._lock:
                        if self._running.get(r.name) is not r:
                            continue  # stopped on purpose meanwhile
                        del self._running[r.name]
                    uptime = time.monotonic() - r.started_at
                    self._teardown(r, grace=0.0)
                    self.emit(ContainerExited(r.name, uptime, 0))
