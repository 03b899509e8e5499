"""Events: everything a backend tells the engine. A small closed set of frozen values.

A backend feeds one event at a time to `Updater.handle`. Besides the boot itself (given to
`Updater.boot` as a `DiskView`), these are all the facts the engine needs:

- the Hub: `PendingSteps` (result of a poll), `MetadataReceived` / `MetadataFailed`,
  `ObjectFetched`, `HubReached` / `HubRequestFailed` (outcome of any Hub request);
- storage: `GcDone` (answer to `RunGc`), `WaitTick` (periodic storage figures for threshold GC);
- containers: `ContainerMounted`, `ContainerStarted`, `ContainerReady` (the /signal), `ContainerExited`,
  `ContainersStopped` (answer to `StopContainers`);
- time: `TimerFired` (answer to `ArmTimer` when the delay ran out and it was not cancelled);
- pv-ctrl: `ObjectPut`, `LocalStepStarted`, `LocalStepUploaded`, `CtrlCommand`.

Data the backend reads from disk or network (a state JSON, a signature verdict) travels inside the
event; the engine never asks for it. Parsed `State` objects are meant to be shared between devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from shared.engine import gc
from shared.engine.progress import Progress

if TYPE_CHECKING:
    from shared.state import State


@dataclass(frozen=True, slots=True)
class StorageStats:
    """statfs of the storage partition, in bytes (§2.3 free-space accounting)."""

    total: int
    free: int

    def reserved(self, percent: int) -> int:
        return gc.reserved_bytes(self.total, percent)

    def real_free(self, percent: int) -> int:
        return gc.real_free(self.total, self.free, percent)


@dataclass(frozen=True, slots=True)
class TrailView:
    """What survived on disk of one revision: `trails/<rev>/`."""

    state: State | None  # parsed .pvr/json; None when missing or unparseable
    progress: Progress | None = None  # .pv/progress; None when missing
    done: bool = False  # .pv/done marker present


@dataclass(frozen=True, slots=True)
class DiskView:
    """What a booting engine gets to know: the boot env, the trails, the object pool.

    `booted_rev` is the kernel cmdline `pv_rev`, i.e. what the bootloader actually booted;
    `pv_rev` / `pv_try` are the boot env values Pantavisor reads ("" when unset).
    """

    booted_rev: str
    pv_rev: str
    pv_try: str
    trails: Mapping[str, TrailView]
    objects: frozenset[str] = frozenset()
    storage: StorageStats | None = None


class Event:
    """Base of all events. `key` is what the transition table dispatches on."""

    __slots__ = ()
    # the class name, set on each subclass below (a plain class attribute: read per handle call);
    # a subclass may define its own `key` property instead (TimerFired)
    key: ClassVar[str] = "Event"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "key" not in cls.__dict__:
            cls.key = cls.__name__


@dataclass(frozen=True, slots=True)
class Step:
    """One step the Hub lists as pending (§3.3 step 1)."""

    rev: str
    state: State | None = None  # already parsed (shared between devices), or
    raw: Any = None  # the raw state JSON (mapping, str or bytes) for the engine to parse
    hub_progress: Progress | None = None  # the Hub's copy of the step's progress
    signature_error: str | None = None  # the backend's verdict; None = valid (or not checked)


@dataclass(frozen=True, slots=True)
class PendingSteps(Event):
    """Result of a Hub poll, oldest first. The engine only ever considers steps[0]."""

    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class MetadataReceived(Event):
    """Answer to FetchMetadata: size of each requested object, and current storage figures."""

    rev: str
    sizes: Mapping[str, int]
    storage: StorageStats


@dataclass(frozen=True, slots=True)
class MetadataFailed(Event):
    rev: str


@dataclass(frozen=True, slots=True)
class ObjectFetched(Event):
    """Answer to FetchObject. `ok` False: hash mismatch or transfer failure (`.tmp` discarded)."""

    sha: str
    ok: bool = True
    hash_mismatch: bool = False


@dataclass(frozen=True, slots=True)
class HubReached(Event):
    """A Hub request succeeded (the Hub client is online / in `report`)."""


@dataclass(frozen=True, slots=True)
class HubRequestFailed(Event):
    """A Hub request failed."""


@dataclass(frozen=True, slots=True)
class GcDone(Event):
    """Answer to RunGc."""

    reclaimed: int
    storage: StorageStats | None = None
    removed_objects: frozenset[str] = frozenset()
    removed_revisions: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class WaitTick(Event):
    """The WAIT loop's periodic check (threshold GC). Optional: backends may never send it."""

    storage: StorageStats
    since_object_put: float | None = None  # seconds since the last pv-ctrl object PUT


# The kinds of timer the engine arms: a timer's name is `<kind>` or `<kind>:<what>`.
TIMER_KINDS = ("commit", "network", "goal", "recovery", "stable", "backoff")


def timer_key(kind: str) -> str:
    """The dispatch key of a TimerFired of this kind (see TimerFired.key)."""
    if kind not in TIMER_KINDS:
        raise ValueError(f"unknown timer kind {kind!r}; expected one of {TIMER_KINDS}")
    return "timer:" + kind


@dataclass(frozen=True, slots=True)
class TimerFired(Event):
    """An armed timer ran out. Names: commit, network, goal:<group>, recovery:<container>,
    stable:<container>, backoff:<container>."""

    name: str

    # Read through instances only, so a property may stand where Event has a class attribute;
    # mypy cannot tell a read-only override apart from a broken one.
    @property
    def key(self) -> str:  # type: ignore[override]  # inline (no timer_key call): read once per event
        return "timer:" + self.name.split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class ContainerMounted(Event):
    name: str


@dataclass(frozen=True, slots=True)
class ContainerStarted(Event):
    name: str


@dataclass(frozen=True, slots=True)
class ContainerReady(Event):
    name: str


@dataclass(frozen=True, slots=True)
class ContainerExited(Event):
    name: str
    uptime: float = 0.0  # seconds since its last start (auto_recovery reset_window)
    code: int = 0


@dataclass(frozen=True, slots=True)
class ContainersStopped(Event):
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LocalStepStarted(Event):
    """pv-ctrl `PUT /steps/locals/<name>` began."""

    rev: str


@dataclass(frozen=True, slots=True)
class LocalStepUploaded(Event):
    """The upload completed; the backend checked signature and parse. `error` None = fine."""

    rev: str
    state: State | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ObjectPut(Event):
    """pv-ctrl `PUT /objects/<sha>` completed: the object is in the pool (hash already checked)."""

    sha: str


@dataclass(frozen=True, slots=True)
class CtrlCommand(Event):
    """pv-ctrl `POST /commands {"op", "payload"}`. For LOCAL_RUN(_COMMIT) the backend loads the
    revision: `state` parsed, or `state_error` = "State JSON not found" / a signature message /
    "State JSON has bad format"."""

    op: str  # a shared.engine.ctrl.Op (a str); any other text is refused with 400 by the engine
    payload: str = ""
    state: State | None = None
    state_error: str | None = None


EVENT_TYPES: tuple[type[Event], ...] = (
    PendingSteps,
    MetadataReceived,
    MetadataFailed,
    ObjectFetched,
    HubReached,
    HubRequestFailed,
    GcDone,
    WaitTick,
    TimerFired,
    ContainerMounted,
    ContainerStarted,
    ContainerReady,
    ContainerExited,
    ContainersStopped,
    LocalStepStarted,
    LocalStepUploaded,
    ObjectPut,
    CtrlCommand,
)
