"""The simulated disk: what survives a power cut on one simulated device. One class for both
simulators: the crashcheck device (`pvsim.memdevice`) and the fleet model (`pvsim.pantavisor`).

What it holds (pantavisor.md §2.1): the boot env Pantavisor writes (`pv_rev`, `pv_try`), the
bootloader's latch, the trails (state, progress record, done marker of each revision), the object
pool, and which objects are hard-linked into which trail.

Storage model (the durable commands of shared.engine.driver, D1):
- Progress, trail JSON and the done marker are written by rename: atomic.
- The env is one block rewritten in place (a torn write leaves it unreadable: `torn`) or, with
  `redundant` writes, two copies with a sequence number: a torn write spoils only the copy being
  written, so the env still reads as it was before it.
- LinkObjects and RunGc are many small operations: a torn one is partial (half the links; the
  trails deleted but no object yet).
- The latch is the bootloader's and atomic.

Sharing (a fleet holds millions of these): trail records are immutable `TrailView`s shared between
disks, the object pool is a frozenset the owner may intern, and `copy` is shallow. `links` is None
on a disk that does not model hard links one by one (the fleet model: LinkObjects is never cut
inside there): a trail then links exactly its state's objects.
"""

from __future__ import annotations

from shared.engine import commands as C
from shared.engine import driver
from shared.engine.bootloader import Latch
from shared.engine.events import DiskView, StorageStats, TrailView
from shared.engine.gc import GcPlan, plan_gc
from shared.state import State

_NO_TRAIL = TrailView(None)

# The trail record a durable command leaves, by (id of the record before, id of the command): a
# fleet's devices write the same commands (the engine's are shared, pvsim.engine_memo) over the same
# records, so the new record is built once and shared (TrailViews are immutable values). The
# entries hold both keys' objects, so their ids stay theirs; the table is cleared when it grows
# past _TRAILS_MAX (commands answering per-device events are new objects every time).
TRAIL_RECORDS: dict[tuple[int, int], tuple[object, object, TrailView]] = {}
_TRAILS = TRAIL_RECORDS
_TRAILS_MAX = 50_000
TRAIL_WRITES = (C.PersistProgress, C.WriteTrail, C.WriteDoneMarker)  # the commands TRAIL_RECORDS knows


class SimDisk:
    """One simulated device's disk (see the module docstring for what a power cut does to it)."""

    __slots__ = ("pv_rev", "pv_try", "torn", "latch", "trails", "objects", "links", "shared")

    def __init__(
        self,
        pv_rev: str,
        pv_try: str,
        latch: Latch,
        trails: dict[str, TrailView],
        objects: frozenset[str],
        links: dict[str, frozenset[str]] | None = None,
    ) -> None:
        self.pv_rev = pv_rev  # the env as it reads ("" = unset), unless torn
        self.pv_try = pv_try
        self.torn = False  # the in-place env block is unreadable
        self.latch = latch
        self.trails = trails
        self.objects = objects
        self.links = links
        # other devices may hold this very disk (the fleet model shares equal disks): whoever
        # writes to it takes a copy first
        self.shared = False

    def copy(self) -> SimDisk:
        new = SimDisk(self.pv_rev, self.pv_try, self.latch, dict(self.trails), self.objects)
        new.torn = self.torn
        if self.links is not None:
            new.links = dict(self.links)
        return new

    def sharing_key(self) -> tuple:
        """Equal for disks with the same contents, built of the same records (trail records and
        object pools are shared values: compared by identity, which the disk keeps alive)."""
        links = None if self.links is None else frozenset((rev, id(shas)) for rev, shas in self.links.items())
        trails = frozenset((rev, id(view)) for rev, view in self.trails.items())
        return (self.pv_rev, self.pv_try, self.torn, self.latch, trails, id(self.objects), links)

    # ------------------------------------------------------------------ reading

    def env(self) -> dict[str, str] | None:
        """The env as the bootloader reads it; None when torn."""
        if self.torn:
            return None
        return {"pv_rev": self.pv_rev, "pv_try": self.pv_try}

    def linked(self, rev: str) -> frozenset[str]:
        """The objects hard-linked into trail `rev`."""
        if self.links is not None:
            return self.links.get(rev, frozenset())
        state = self.trails.get(rev, _NO_TRAIL).state
        return state.object_shas() if state is not None else frozenset()

    def unbootable(self, rev: str) -> str | None:
        """Why `rev` cannot be booted from this disk, or None."""
        if not rev:
            return "no revision set"
        trail = self.trails.get(rev)
        if trail is None or trail.state is None:
            return "its trail is missing"
        shas = trail.state.object_shas()
        if not shas <= self.objects:
            return "objects missing from the pool"
        if not shas <= self.linked(rev):
            return "objects not linked into its trail"
        return None

    def view(self, booted_rev: str, storage: StorageStats | None) -> DiskView:
        return driver.disk_view(booted_rev, self.env(), self.trails, self.objects, storage)

    # ------------------------------------------------------------------ the durable commands

    def apply(self, command: C.Command, *, torn: bool = False) -> GcPlan | None:
        """Carry out one durable command (cut inside it when `torn`); for RunGc, the plan it
        carried out (all of it, or only the trails when torn). The fleet model's hot path: the
        commands are told apart by `type(...) is`, most frequent first."""
        kind = type(command)
        trails = self.trails
        if kind is C.PersistProgress or kind is C.WriteTrail or kind is C.WriteDoneMarker:
            rev = command.rev  # type: ignore[attr-defined]
            old = trails.get(rev)
            known = _TRAILS.get((id(old), id(command)))
            if known is None:
                if len(_TRAILS) >= _TRAILS_MAX:
                    _TRAILS.clear()
                known = _TRAILS[id(old), id(command)] = (old, command, _written(old, command))
            trails[rev] = known[2]
        elif kind is C.SetBootEnv:
            self.set_env(command, torn=torn)  # type: ignore[arg-type]
        elif kind is C.LinkObjects:
            if self.links is not None:  # else links follow the state
                self.link(command.rev, command.state, torn=torn)  # type: ignore[attr-defined]
        elif kind is C.DeleteRevision:
            trails.pop(command.rev, None)  # type: ignore[attr-defined]
            if self.links is not None:
                self.links.pop(command.rev, None)  # type: ignore[attr-defined]
        elif kind is C.RunGc:
            return self.gc(command, torn=torn)  # type: ignore[arg-type]
        return None

    def write_trail(self, rev: str, state: State) -> None:
        self.apply(C.WriteTrail(rev, state))

    def set_env(self, command: C.SetBootEnv, *, torn: bool) -> None:
        if torn:
            if not command.redundant:
                self.torn = True  # in place: the only copy is half written
            return  # redundant: the copy being written is spoilt, the other still reads
        if self.torn:  # rewriting an unreadable block: nothing of the old values is kept
            self.torn = False
            self.pv_rev = self.pv_try = ""
        if command.pv_rev is not None:
            self.pv_rev = command.pv_rev
        if command.pv_try is not None:
            self.pv_try = command.pv_try

    def link(self, rev: str, state: State, *, torn: bool) -> None:
        """`pv_state_prepare_run`: hard-link the state's objects that are in the pool."""
        if self.links is None:
            return  # links follow the state (see the module docstring)
        present = sorted(state.object_shas() & self.objects)
        if torn:
            present = present[: len(present) // 2]
        self.links[rev] = self.links.get(rev, frozenset()) | frozenset(present)

    def gc(self, command: C.RunGc, *, torn: bool = False) -> GcPlan:
        """§2.3 through `gc.plan_gc`: the doomed trails first, then the unreferenced objects."""
        trails = self.trails
        plan = plan_gc(
            {rev: self.linked(rev) for rev in trails},
            self.objects,
            command.keep_revisions,
            command.keep_objects,
        )
        for rev in plan.revisions:
            del trails[rev]
            if self.links is not None:
                self.links.pop(rev, None)
        if torn:
            return GcPlan(plan.revisions, ())
        if plan.objects:
            self.objects = self.objects.difference(plan.objects)
        return plan


def _written(old: TrailView | None, command: C.Command) -> TrailView:
    """The trail record after PersistProgress, WriteTrail or WriteDoneMarker over `old` (None: none)."""
    kind = type(command)
    if kind is C.PersistProgress:
        record = command.record  # type: ignore[attr-defined]
        return TrailView(old.state, record, old.done) if old else TrailView(None, record)
    if kind is C.WriteTrail:
        state = command.state  # type: ignore[attr-defined]
        return TrailView(state, old.progress, old.done) if old else TrailView(state)
    return TrailView(old.state, old.progress, True) if old else TrailView(None, None, True)
