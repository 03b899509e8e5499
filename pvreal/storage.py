"""The on-device storage tree (`/storage` on a Pantavisor device) under a root folder.

Layout (pantavisor.md §2.1):

    objects/<sha>                       content-addressed pool; downloads land in objects/<sha>.tmp
    trails/<rev>/.pvr/json              the revision's state JSON (canonical)
    trails/<rev>/.pvr/config            {"ObjectsDir": ...}: a trail is a pvr checkout
    trails/<rev>/.pv/progress|done|commitmsg
    trails/<rev>/.pv/pv-kernel.img ...  hard links to the boot assets named by bsp/run.json
    trails/<rev>/<path>                 hard links into objects/ (`*.bind` copied), inline JSONs as files
    disks/perm/<container>/<vol>        permanent volumes
    disks/rev/<rev>/<container>/<vol>   revision volumes
    logs/<rev>/<container>/...          logs per revision

Only file logic lives here (no mounts, no subprocesses), so unit tests run it on pyfakefs.
Every write that must survive a power cut goes through `pvreal.durable`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvreal.durable import atomic_write, fsync_dir
from pvreal.objectstore import (  # the pool under objects/
    ObjectError,
    ObjectStore,
    is_sha,
)
from pvreal.storage_check import CheckReport, check_storage
from shared import canonical
from shared.engine.config import DEFAULT_CONFIG
from shared.engine.gc import GcPlan, plan_gc, real_free, reserved_bytes
from shared.errors import PvError
from shared.state import (  # the revision-name rule is shared: pv-ctrl and the engine use it
    BOOT_ASSET_NAMES,
    LOCAL_PREFIX,
    check_path,
    check_revision_name,
    is_unloaded,
)


def check_entry_path(key: str) -> str:
    """A state key used as a relative path inside a trail: no absolute path, no '..', no '.'."""
    check_path(key)
    return key


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class StorageSpace:
    """Pantavisor's device meta `storage` (arithmetic: shared.engine.gc.reserved_bytes and
    real_free, with the device's PV_STORAGE_GC_RESERVED)."""

    total: int
    free: int
    reserved: int
    real_free: int

    def as_meta(self) -> dict[str, int]:
        return {
            "total": self.total,
            "free": self.free,
            "reserved": self.reserved,
            "real_free": self.real_free,
        }


@dataclass(frozen=True, slots=True)
class GcResult:
    removed_revisions: tuple[str, ...]
    removed_objects: tuple[str, ...]
    reclaimed: int  # bytes of object files deleted


StatFs = Callable[[Path], tuple[int, int]]  # path -> (total bytes, free bytes)


def _statvfs(path: Path) -> tuple[int, int]:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bfree * st.f_frsize


# --------------------------------------------------------------------------------------------
# The storage tree


class Storage:
    """`/storage` under `root`. Paths are computed here and only here."""

    def __init__(
        self,
        root: Path,
        *,
        reserved_percent: int = DEFAULT_CONFIG.gc_reserved,  # PV_STORAGE_GC_RESERVED
        statfs: StatFs = _statvfs,
    ):
        self.root = Path(root)
        self.objects = ObjectStore(self.root / "objects")
        self.reserved_percent = reserved_percent
        self._statfs = statfs

    # -- layout -------------------------------------------------------------------------------
    @property
    def trails_dir(self) -> Path:
        return self.root / "trails"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def disks_dir(self) -> Path:
        return self.root / "disks"

    def init_layout(self) -> None:
        for d in (self.objects.dir, self.trails_dir, self.logs_dir, self.disks_dir / "perm"):
            d.mkdir(parents=True, exist_ok=True)
        (self.disks_dir / "rev").mkdir(exist_ok=True)
        (self.root / "boot").mkdir(exist_ok=True)
        shutil.rmtree(self.root / ".trash", ignore_errors=True)  # deletes a crash interrupted

    def trail_dir(self, rev: str) -> Path:
        return self.trails_dir / check_revision_name(rev)

    def state_path(self, rev: str) -> Path:
        return self.trail_dir(rev) / ".pvr" / "json"

    def progress_path(self, rev: str) -> Path:
        return self.trail_dir(rev) / ".pv" / "progress"

    def done_path(self, rev: str) -> Path:
        return self.trail_dir(rev) / ".pv" / "done"

    def commitmsg_path(self, rev: str) -> Path:
        return self.trail_dir(rev) / ".pv" / "commitmsg"

    def log_dir(self, rev: str, owner: str) -> Path:
        """logs/<rev>/<container|pantavisor>/"""
        return self.logs_dir / check_revision_name(rev) / check_entry_path(owner)

    def volume_dir(self, container: str, volume: str, persistence: str, rev: str) -> Path | None:
        """Where a container volume lives on disk; None for `boot` (a tmpfs, nothing on disk)."""
        check_entry_path(container)
        check_entry_path(volume)
        if persistence == "permanent":
            return self.disks_dir / "perm" / container / volume
        if persistence == "revision":
            return self.disks_dir / "rev" / check_revision_name(rev) / container / volume
        return None

    # -- revisions ----------------------------------------------------------------------------
    def revisions(self) -> list[str]:
        """Every revision that has a trail on disk, local ones as `locals/<name>`. A trail is
        there once any of its files is: the state JSON, or only a progress record or a done
        marker (a step refused before its state was written, a queued one), which GC removes
        like any other trail."""
        found: list[str] = []
        if not self.trails_dir.is_dir():
            return found
        for name in sorted(os.listdir(self.trails_dir)):
            if name == "locals":
                for local in sorted(os.listdir(self.trails_dir / "locals")):
                    if self._has_trail(self.trails_dir / "locals" / local):
                        found.append(LOCAL_PREFIX + local)
            elif name != "current" and self._has_trail(self.trails_dir / name):
                found.append(name)
        return found

    @staticmethod
    def _has_trail(trail: Path) -> bool:
        if trail.is_symlink():
            return False
        return any((trail / f).is_file() for f in (".pvr/json", ".pv/progress", ".pv/done"))

    def has_state(self, rev: str) -> bool:
        return self.state_path(rev).is_file()

    def write_state(self, rev: str, state: Mapping[str, Any]) -> None:
        """trails/<rev>/.pvr/json (canonical) and .pvr/config, each durably."""
        for key in state:
            if key != "#spec":
                check_entry_path(key)
        pvr = self.state_path(rev).parent
        pvr.mkdir(parents=True, exist_ok=True)
        (self.trail_dir(rev) / ".pv").mkdir(exist_ok=True)
        atomic_write(pvr / "config", canonical.dump_bytes({"ObjectsDir": str(self.objects.dir)}))
        atomic_write(self.state_path(rev), canonical.dump_bytes(dict(state)))

    def read_state(self, rev: str) -> dict[str, Any]:
        path = self.state_path(rev)
        return canonical.loads_object(path.read_bytes(), source=str(path))

    def write_progress(self, rev: str, record: Mapping[str, Any]) -> None:
        self.progress_path(rev).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.progress_path(rev), canonical.dump_bytes(dict(record)))

    def read_progress(self, rev: str) -> dict[str, Any] | None:
        path = self.progress_path(rev)
        if not path.is_file():
            return None
        return canonical.loads_object(path.read_bytes(), source=str(path))

    def mark_done(self, rev: str) -> None:
        self.done_path(rev).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.done_path(rev), b"")

    def is_done(self, rev: str) -> bool:
        return self.done_path(rev).is_file()

    def write_commitmsg(self, rev: str, message: str) -> None:
        self.commitmsg_path(rev).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.commitmsg_path(rev), message.encode("utf-8"))

    def set_current(self, rev: str) -> None:
        """trails/current and logs/current → <rev>, replaced atomically (symlink + rename)."""
        check_revision_name(rev)
        for base in (self.trails_dir, self.logs_dir):
            base.mkdir(parents=True, exist_ok=True)
            tmp = base / ".current.tmp"
            tmp.unlink(missing_ok=True)
            os.symlink(rev, tmp)
            os.replace(tmp, base / "current")
            fsync_dir(base)

    # -- checkout ------------------------------------------------------------------------------
    def installs(self, state: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """(path, sha) for every object the state references."""
        for key, value in state.items():
            if key != "#spec" and is_sha(value):
                yield check_entry_path(key), value

    def missing_objects(self, state: Mapping[str, Any]) -> list[str]:
        return sorted({sha for _, sha in self.installs(state) if not self.objects.has(sha)})

    def link_trail(self, rev: str, state: Mapping[str, Any]) -> None:
        """Check the revision out into trails/<rev>/ (pantavisor.md §2.1 'Preparing a revision').

        1. hard-link every object (copy `*.bind`); 2. write inline JSONs that are not there yet;
        3. link the boot assets into .pv/. Raises ObjectError naming the first missing object
        before touching the trail.
        """
        trail = self.trail_dir(rev)
        missing = self.missing_objects(state)
        if missing:
            raise ObjectError("object missing from the pool", source=str(trail), key=missing[0])
        touched: set[Path] = set()
        for path, sha in self.installs(state):
            dest = trail / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._place_object(sha, dest, copy=path.endswith(".bind"))
            touched.add(dest.parent)
        for key, value in state.items():
            if key == "#spec" or is_sha(value) or is_unloaded(key):
                continue
            dest = trail / check_entry_path(key)
            if dest.exists():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(dest, canonical.dump_bytes(value))
        self._link_boot_assets(trail, state)
        for d in touched:
            fsync_dir(d)

    def _place_object(self, sha: str, dest: Path, *, copy: bool) -> None:
        src = self.objects.path(sha)
        if dest.exists() or dest.is_symlink():
            if not copy and os.path.samestat(dest.lstat(), src.stat()):
                return
            dest.unlink()
        if copy:
            shutil.copyfile(src, dest)
        else:
            os.link(src, dest)

    def _link_boot_assets(self, trail: Path, state: Mapping[str, Any]) -> None:
        bsp = state.get("bsp/run.json")
        if not isinstance(bsp, dict):
            return
        meta = trail / ".pv"
        meta.mkdir(parents=True, exist_ok=True)
        wanted: list[tuple[str, str]] = []
        for key, name in BOOT_ASSET_NAMES.items():
            if isinstance(bsp.get(key), str) and bsp[key]:
                wanted.append((f"bsp/{bsp[key]}", name))
        for n, addon in enumerate(bsp.get("addons") or [], start=1):
            if isinstance(addon, str):
                wanted.append((f"bsp/{addon}", f"pv-initrd.img.{n}"))
        for entry, name in wanted:
            sha = state.get(entry)
            if is_sha(sha):
                self._place_object(sha, meta / name, copy=False)

    # -- space and GC ---------------------------------------------------------------------------
    def space(self) -> StorageSpace:
        total, free = self._statfs(self.root)
        return StorageSpace(
            total,
            free,
            reserved_bytes(total, self.reserved_percent),
            max(0, real_free(total, free, self.reserved_percent)),
        )

    def remove_revision(self, rev: str) -> None:
        """Delete a revision's trail, its logs and its revision volumes."""
        for path in (
            self.trail_dir(rev),
            self.logs_dir / check_revision_name(rev),
            self.disks_dir / "rev" / rev,
        ):
            if path.is_dir() and not path.is_symlink():
                self._remove_tree(path)

    def _remove_tree(self, path: Path) -> None:
        """Rename the folder into `.trash/` first, then delete it there. pv-ctrl stores a state
        on its own worker thread: racing it, a plain rmtree fails half-way ("Directory not
        empty") and leaves a half-deleted trail; after the rename the writer finds the folder
        gone and the delete cannot be disturbed. `init_layout` empties what a crash left."""
        trash = self.root / ".trash"
        trash.mkdir(exist_ok=True)
        doomed = trash / f"{path.name}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed)
        with contextlib.suppress(OSError):  # left only while another delete is under way
            trash.rmdir()

    def trail_objects(self) -> dict[str, frozenset[str]]:
        """rev -> the object shas its state references (an unreadable trail references none;
        check() reports it). A `*.bind` install is a copy, not a link, so trail states are read
        rather than link counts."""
        found: dict[str, frozenset[str]] = {}
        for rev in self.revisions():
            try:
                found[rev] = frozenset(sha for _, sha in self.installs(self.read_state(rev)))
            except (OSError, PvError):
                found[rev] = frozenset()
        return found

    def plan_gc(self, keep_revisions: Iterable[str], keep_objects: Iterable[str] = ()) -> GcPlan:
        """The engine's GC rule (`shared.engine.gc.plan_gc`) applied to this tree: only the
        inputs are gathered here, so the simulator and this backend delete the same things."""
        return plan_gc(
            self.trail_objects(),
            frozenset(self.objects.names()),
            frozenset(keep_revisions),
            frozenset(keep_objects),
        )

    def run_gc(self, plan: GcPlan) -> GcResult:
        """Perform a plan of `shared.engine.gc`: its trails first, then its objects."""
        for rev in plan.revisions:
            self.remove_revision(rev)
        removed, reclaimed = [], 0
        for sha in plan.objects:
            path = self.objects.path(sha)
            reclaimed += path.stat().st_size
            path.unlink()
            removed.append(sha)
        if removed:
            fsync_dir(self.objects.dir)
        return GcResult(tuple(plan.revisions), tuple(removed), reclaimed)

    # -- consistency ----------------------------------------------------------------------------
    def check(self, revs: Iterable[str] | None = None) -> CheckReport:
        """Re-hash objects, then compare each trail with its state JSON (pvreal.storage_check).
        With `revs` (a boot checks only the revision it boots) only their objects are re-hashed."""
        return check_storage(self, revs)
