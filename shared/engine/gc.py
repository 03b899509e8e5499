"""Garbage collection (§2.3): which revisions GC keeps, and what it removes.

The engine decides the keep set (`keep_revisions`) and emits one durable `RunGc`; the backend
gathers its disk (trail -> linked object shas, the pool's object names), computes the deletions
with `plan_gc` and performs that `GcPlan` (trails first, then objects), so every backend deletes
exactly the same things. The free-space arithmetic (`reserved_bytes`, `real_free`) is here too:
the engine's space check, threshold GC, pv-ctrl's 507 and the storage meta all use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from shared.engine.config import Config, Ordering

FACTORY_REV = "0"


def reserved_bytes(total: int, percent: int) -> int:
    """The share of the storage partition GC keeps free (PV_STORAGE_GC_RESERVED, percent)."""
    return total * percent // 100


def real_free(total: int, free: int, percent: int) -> int:
    """Free bytes beyond the reserve: what a download or an upload may use. Negative when the
    reserve is already eaten into (callers that report it clamp it to 0)."""
    return free - reserved_bytes(total, percent)


def keep_revisions(
    *,
    running: str,
    in_flight: str | None,
    pv_rev: str,
    pv_try: str,
    config: Config,
) -> frozenset[str]:
    """Never removed: the running revision, the in-flight update, the committed `pv_rev`, and
    `0` with PV_STORAGE_GC_KEEP_FACTORY=1. The hardened ordering also keeps `pv_try`: the
    bootloader may still boot it (a rolled-back boot cut before it cleared pv_try)."""
    keep = {running, pv_rev}
    if in_flight:
        keep.add(in_flight)
    if config.gc_keep_factory:
        keep.add(FACTORY_REV)
    if pv_try and config.ordering is Ordering.HARDENED:
        keep.add(pv_try)
    keep.discard("")
    return frozenset(keep)


@dataclass(frozen=True, slots=True)
class GcPlan:
    revisions: tuple[str, ...]  # trails to delete
    objects: tuple[str, ...]  # objects to delete afterwards


def plan_gc(
    trails: Mapping[str, Iterable[str]],
    objects: AbstractSet[str],
    keep_revisions: AbstractSet[str],
    keep_objects: AbstractSet[str] = frozenset(),
) -> GcPlan:
    """`trails`: rev → the object shas its trail links. Removes every other revision, then every
    object no kept trail references (nlink <= 1), except the in-flight update's objects."""
    doomed = tuple(sorted(r for r in trails if r not in keep_revisions))
    referenced: set[str] = set(keep_objects)
    for rev, shas in trails.items():
        if rev in keep_revisions:
            referenced.update(shas)
    return GcPlan(doomed, tuple(sorted(o for o in objects if o not in referenced)))
