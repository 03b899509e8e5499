"""A full consistency check of a storage tree: objects re-hashed, each trail compared with its
state JSON (`Storage.check`, `pvreal device check`-style tooling and the tests)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pvreal.objectstore import is_sha, sha256_file
from shared import canonical
from shared.errors import PvError
from shared.state import is_unloaded

if TYPE_CHECKING:
    from pvreal.storage import Storage


@dataclass(slots=True)
class CheckReport:
    """The result of a full consistency check; `ok` when every list is empty."""

    corrupt_objects: list[str] = field(default_factory=list)  # bytes do not hash to the name
    partial_objects: list[str] = field(default_factory=list)  # leftover <sha>.tmp
    missing_objects: list[str] = field(default_factory=list)  # "<rev>:<path> -> <sha>"
    trail_problems: list[str] = field(default_factory=list)  # "<rev>:<path>: what is wrong"

    @property
    def ok(self) -> bool:
        return not (
            self.corrupt_objects
            or self.partial_objects
            or self.missing_objects
            or self.trail_problems
        )


def check_storage(storage: Storage, revs: Iterable[str] | None = None) -> CheckReport:
    """Re-hash objects, then compare each trail with its state JSON.

    With `revs` (a boot checks only the revision it boots) only the objects those revisions
    use are re-hashed; without, the whole pool is.
    """
    report = CheckReport()
    report.partial_objects = storage.objects.partial_names()
    if revs is None:
        # a trail that is only a progress record has nothing checked out to compare
        checked = [r for r in storage.revisions() if storage.has_state(r)]
        to_hash = storage.objects.names()
    else:
        checked = list(revs)
        to_hash = sorted(
            {sha for rev in checked for _, sha in _installs_of(storage, rev)
             if storage.objects.has(sha)}
        )
    report.corrupt_objects = [s for s in to_hash if not storage.objects.is_valid(s)]
    for rev in checked:
        _check_trail(storage, rev, report)
    return report


def _installs_of(storage: Storage, rev: str) -> list[tuple[str, str]]:
    try:
        return list(storage.installs(storage.read_state(rev)))
    except (OSError, PvError):
        return []  # reported by _check_trail


def _check_trail(storage: Storage, rev: str, report: CheckReport) -> None:
    try:
        state = storage.read_state(rev)
    except (OSError, PvError) as exc:
        report.trail_problems.append(f"{rev}:.pvr/json: {exc}")
        return
    trail = storage.trail_dir(rev)
    for path, sha in storage.installs(state):
        if not storage.objects.has(sha):
            report.missing_objects.append(f"{rev}:{path} -> {sha}")
            continue
        dest = trail / path
        if not dest.is_file():
            report.trail_problems.append(f"{rev}:{path}: not checked out")
        elif path.endswith(".bind"):
            if sha256_file(dest) != sha:
                report.trail_problems.append(f"{rev}:{path}: copy differs from object")
        elif not os.path.samestat(dest.stat(), storage.objects.path(sha).stat()):
            report.trail_problems.append(f"{rev}:{path}: not a hard link to its object")
    for key, value in state.items():
        if key == "#spec" or is_sha(value) or is_unloaded(key):
            continue
        dest = trail / key
        if not dest.is_file():
            report.trail_problems.append(f"{rev}:{key}: not checked out")
            continue
        try:
            on_disk = canonical.loads(dest.read_bytes(), source=str(dest))
        except PvError:
            on_disk = None
        if on_disk != value:
            report.trail_problems.append(f"{rev}:{key}: differs from the state JSON")
