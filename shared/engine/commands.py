"""Commands: everything the engine asks a backend to do. A small closed set of frozen values.

`durable` commands persist something. A backend executes them **in the order given**, each one
complete (written and synced) before the next starts; a power cut can fall between any two of
them, and, where the storage model allows, inside one (a torn env block, a partial set of links, a
partial GC). Crash-point enumeration (`pvsim crashcheck`) cuts exactly there.

Non-durable commands (reports, timers, container control, fetches) may be lost by a power cut at
no cost: the engine's recovery on the next boot never relies on them.

Reboot is terminal: after it the Updater handles nothing more; the backend boots and builds a new
Updater from what survived (`Updater.boot(DiskView)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from shared.engine.progress import Progress

if TYPE_CHECKING:
    from shared.state import State


class Command:
    __slots__ = ()
    durable: ClassVar[bool] = False


# ----------------------------------------------------------------------------- durable steps


@dataclass(frozen=True, slots=True)
class PersistProgress(Command):
    """Write `trails/<rev>/.pv/progress` (atomically: temp file, fsync, rename)."""

    rev: str
    record: Progress
    durable: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class WriteTrail(Command):
    """Save the state JSON to `trails/<rev>/.pvr/json` (+ `.pvr/config`), atomically."""

    rev: str
    state: State = field(repr=False)
    durable: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class LinkObjects(Command):
    """`pv_state_prepare_run`: hard-link every object into the trail, write the inline JSON
    files, link the boot assets into `.pv/`. Idempotent; a power cut may leave it partial."""

    rev: str
    state: State = field(repr=False)
    durable: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class SetBootEnv(Command):
    """Write the bootloader env. None = leave the key as it is, "" = unset it.

    `redundant` (hardened ordering): write the inactive one of two env copies with a higher
    sequence number, so a torn write leaves the previous copy valid. Otherwise the single env
    block is rewritten in place, which a power cut can tear (faithful ordering, §3.7)."""

    pv_rev: str | None = None
    pv_try: str | None = None
    redundant: bool = True
    durable: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class WriteDoneMarker(Command):
    """Create the empty `trails/<rev>/.pv/done` marker."""

    rev: str
    durable: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class DeleteRevision(Command):
    """Remove `trails/<rev>`, `logs/<rev>`, `disks/rev/<rev>` (a failed local upload)."""

    rev: str
    durable: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class RunGc(Command):
    """Garbage-collect (§2.3): delete every trail not in `keep_revisions`, then every object that
    no remaining trail references and that is not in `keep_objects` (the in-flight update's).
    The plan is `shared.engine.gc.plan_gc`; the backend answers with GcDone."""

    keep_revisions: frozenset[str]
    keep_objects: frozenset[str] = frozenset()
    reason: str = "command"  # "space" | "threshold" | "command"
    durable: ClassVar[bool] = True


# ----------------------------------------------------------------------------- the rest


@dataclass(frozen=True, slots=True)
class ReportProgress(Command):
    """Queue the record for `PUT /trails/<id>/steps/<rev>/progress` (remote revisions only)."""

    rev: str
    record: Progress


@dataclass(frozen=True, slots=True)
class FetchMetadata(Command):
    """Ask the Hub for size/URL of these objects; answer MetadataReceived or MetadataFailed."""

    rev: str
    shas: frozenset[str]


@dataclass(frozen=True, slots=True)
class FetchObject(Command):
    """Download one object to `objects/<sha>.tmp`, check its sha256, rename it into place.
    Answer ObjectFetched (ok, or hash mismatch / failure with the .tmp removed)."""

    rev: str
    sha: str
    size: int = 0


@dataclass(frozen=True, slots=True)
class SwitchRevision(Command):
    """The running revision is now `rev` (non-reboot transition; `logs/current`, meta)."""

    rev: str


@dataclass(frozen=True, slots=True)
class StartContainers(Command):
    """Mount and start these containers of the running revision (goal MOUNTED: mount only).
    Answer with ContainerMounted / ContainerStarted, later ContainerReady / ContainerExited."""

    rev: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StopContainers(Command):
    """Lenient stop, forced after `grace` seconds; answer ContainersStopped."""

    names: tuple[str, ...]
    grace: float = 5.0


@dataclass(frozen=True, slots=True)
class ArmTimer(Command):
    """(Re)arm timer `name` to fire `delay` seconds from now; re-arming replaces it."""

    name: str
    delay: float


@dataclass(frozen=True, slots=True)
class CancelTimer(Command):
    name: str


@dataclass(frozen=True, slots=True)
class CtrlReply(Command):
    """The HTTP answer to the pv-ctrl request that produced the current event."""

    status: int
    retry_after: int | None = None
    body: str = ""


@dataclass(frozen=True, slots=True)
class Reboot(Command):
    """Stop everything, sync, reboot (or power off). Terminal for this Updater."""

    reason: str
    poweroff: bool = False


COMMAND_TYPES: tuple[type[Command], ...] = (
    PersistProgress,
    WriteTrail,
    LinkObjects,
    SetBootEnv,
    WriteDoneMarker,
    DeleteRevision,
    RunGc,
    ReportProgress,
    FetchMetadata,
    FetchObject,
    SwitchRevision,
    StartContainers,
    StopContainers,
    ArmTimer,
    CancelTimer,
    CtrlReply,
    Reboot,
)
DURABLE_TYPES = tuple(t for t in COMMAND_TYPES if t.durable)
