"""A rollout plan's revisions as real states, shaped like pvsim's (pvsim/revisions.py): a BSP, `net`
in the root group, `web` (status goal READY) and `db` in the app group, default groups. Each
release rebuilds the parts it names (`bsp`: a new kernel, so a reboot; `app:NAME`: a new root
file system for that container, a non-reboot update). A `never_ready` release's changed
containers carry /etc/never-ready: the fleet's app stand-in (`scenario_run.ReadySignaller`) then never
signals ready for them, which is what the defect means in pvsim."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvreal.objectstore import ObjectStore
from pvreal.rev.build import build_bsp, build_container, replace_part
from pvreal.rootfs import busybox_rootfs
from shared.errors import PvError

NEVER_READY_MARK = "etc/never-ready"
INIT = """#!/bin/sh
trap 'exit 0' TERM
while :; do sleep 1 & wait $!; done
"""
SUPPORTED_DEFECTS = ("none", "never_ready")
CONTAINERS = {"net": ("root", None), "web": ("app", "READY"), "db": ("app", None)}


@dataclass(frozen=True)
class RealRevision:
    name: str
    state: Path
    changed_mb: float  # bytes of the objects this revision adds over the previous one, in MB


def _rootfs(work: Path, tag: str, never_ready: bool) -> Path:
    dest = work / f"rootfs-{tag}"
    busybox_rootfs(dest, INIT)
    (dest / "etc" / "version").write_text(tag + "\n")
    mark = dest / NEVER_READY_MARK
    if never_ready:
        mark.write_text("this app never signals ready\n")
    else:
        mark.unlink(missing_ok=True)
    return dest


def _container(work: Path, objects: ObjectStore, name: str, tag: str, never_ready: bool) -> dict[str, Any]:
    group, goal = CONTAINERS.get(name, ("app", None))
    return build_container(name, rootfs=_rootfs(work, tag, never_ready), oci_image=None,
                           objects=objects, group=group, status_goal=goal)  # fmt: skip


def build(work: Path, releases: list[dict[str, Any]]) -> tuple[Path, list[RealRevision]]:
    """Factory state and one state per release under `work` (objects in work/objects);
    returns (objects folder, [factory, release 1, ...])."""
    work.mkdir(parents=True, exist_ok=True)
    objects = ObjectStore(work / "objects")
    state: dict[str, Any] = {"#spec": "pantavisor-service-system@1"}
    kernel, initrd = work / "kernel.img", work / "initrd.img"
    kernel.write_bytes(b"pvtwin validation kernel factory\n" * 64)
    initrd.write_bytes(b"pvtwin validation initrd\n" * 64)
    state.update(build_bsp(kernel=kernel, initrd=initrd, objects=objects))
    for name in CONTAINERS:
        state.update(_container(work, objects, name, f"{name}-factory", False))
    revisions = [_save(work, "factory", state, set(), objects)]
    for release in releases:
        name_, defect = release["name"], release.get("defect", "none")
        if defect not in SUPPORTED_DEFECTS:
            raise PvError(f"release {name_}: defect {defect!r} cannot be made real here "
                          f"(supported: {', '.join(SUPPORTED_DEFECTS)})")  # fmt: skip
        before = set(_shas(state))
        state = json.loads(json.dumps(state))
        for part in release["parts"]:
            if part == "bsp":
                kernel.write_bytes(f"pvtwin validation kernel {name_}\n".encode() * 64)
                state = replace_part(state, "bsp/", build_bsp(kernel=kernel, initrd=initrd, objects=objects))
            else:
                name = part.removeprefix("app:")
                never = defect == "never_ready"
                entries = _container(work, objects, name, f"{name}-{name_}", never)
                state = replace_part(state, f"{name}/", entries)
        revisions.append(_save(work, name_, state, before, objects))
    return objects.dir, revisions


def _shas(state: dict[str, Any]) -> list[str]:
    return [v for v in state.values() if isinstance(v, str) and len(v) == 64]


def _save(work: Path, name: str, state: dict[str, Any], before: set[str], objects: ObjectStore) -> RealRevision:
    path = work / f"{name}.json"
    path.write_text(json.dumps(state, sort_keys=True, separators=(",", ":")))
    new = set(_shas(state)) - before
    size = sum(os.path.getsize(objects.path(sha)) for sha in new)
    return RealRevision(name, path, size / 1e6)
