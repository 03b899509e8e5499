"""Stand-ins for the container runtime: the real `ContainerRunner` runs over mounts and a runc
that do nothing (root and real containers are not what a crash point is about: the durable files
are). tests/test_interpreter_conformance.py uses the same."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pvreal.runc import StopResult


class MountsOnPaper:
    """pvreal.mounts.MountOps that mounts nothing."""

    def mount(self, source: str, target: Path, fstype: str | None, flags: int, data: str) -> None:
        pass

    def loop_mount(self, image: Path, target: Path, fstype: str) -> None:
        pass

    def umount(self, target: Path, *, lazy: bool = False) -> None:
        pass


class NoRunc:
    """pvreal.runc.Runc's interface, running nothing: every init stays up."""

    def __init__(self) -> None:
        self.started: dict[str, Any] = {}

    def create(self, cid: str, bundle: Path, *, console_log: Path | None = None) -> Any:
        self.started[cid] = init = SimpleNamespace(pid=0, alive=lambda: True)
        return init

    def start(self, cid: str) -> None:
        pass

    def run(self, cid: str, bundle: Path, *, console_log: Path | None = None) -> Any:
        return self.create(cid, bundle, console_log=console_log)

    def known(self, cid: str) -> bool:
        return cid in self.started

    def stop(self, cid: str, *, grace: float) -> StopResult:
        self.started.pop(cid, None)
        return StopResult("exited", 0.0)

    def delete(self, cid: str, *, force: bool = False) -> None:
        self.started.pop(cid, None)

    def list_ids(self) -> list[str]:
        return []
