"""What a live simulated device holds between updates, and the entries of its agenda.

A device waits for many things at once (timers, transfers, containers, the next poll); they sit in
one small heap per device, `DeviceBrain.agenda`, of `(time, seq, entry)`, and the device sleeps
until the earliest. An entry is one of three kinds:

- an `Event` itself: fed to the engine when due (a container started, a Hub answer timed out);
  A `TimerFired` entry is an armed timer: its `seq` is the generation of that arming, and it fires
  only if it is still the latest arming of its name (`shared.engine.driver.TimerGenerations`, D4);
- `FlowEnd`: a running object transfer's fixed end time (it runs at its own link's pace); when
  it comes, the Hub's egress confirms it (it may have been slowed down since: then the egress
  ends it itself, later, and the device is woken: `waker`);
- `TransferDue`: an object transfer ended; if it succeeded, the object goes into the pool before
  the engine hears `ObjectFetched`.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappush
from typing import TYPE_CHECKING

from shared.engine.driver import TimerGenerations
from shared.engine.events import Event, ObjectFetched
from shared.engine.progress import Progress

if TYPE_CHECKING:
    from pvsim.engine_memo import EngineState
    from pvsim.fairshare import Flow
    from pvsim.simdisk import SimDisk


class TransferDue:
    __slots__ = ("event", "mb")

    def __init__(self, event: ObjectFetched, mb: float) -> None:
        self.event = event  # the answer: ok, failed or hash mismatch
        self.mb = mb  # megabytes moved before it ended


class FlowEnd:
    """A running transfer's fixed end (pvsim.transfer.Egress.complete decides whether it still holds)."""

    __slots__ = ("flow", "token")

    def __init__(self, flow: Flow, token: int) -> None:
        self.flow = flow
        self.token = token


Entry = Event | TransferDue | FlowEnd

# The events a device has yet to feed its engine, oldest first. A list, not a deque: it holds a
# few events at a time, and every device-update in flight has one (an empty deque is 760 bytes
# with its first block, an empty list 56: ~0.7 KB per device-update in flight).
Queue = list[Event]


class DeviceBrain:
    """A live device between updates: its (shared) engine state, its disk and what it is waiting for."""

    __slots__ = (
        "engine", "disk", "booted", "agenda", "seq", "timers", "hub_progress", "hub_confirmed", "transfers", "waker",
    )  # fmt: skip

    def __init__(self, engine: EngineState, disk: SimDisk, booted: str) -> None:
        self.engine = engine  # shared with every device whose engine is equal (pvsim.engine_memo)
        self.disk = disk  # shared with other devices until it is first written (copy-on-write)
        self.booted = booted
        self.agenda: list[tuple[float, int, Entry]] = []
        self.seq = 0  # agenda order for entries due at the same time; a timer's is its generation
        self.timers = TimerGenerations()
        self.hub_progress: dict[str, Progress] = {}  # what the Hub holds of each step's progress
        self.hub_confirmed = False  # a Hub request succeeded since the network timer was armed
        # object transfers running through the Hub's egress, each with the answer it will give if it
        # completes; they end when the egress says so, so they join the agenda only when they end.
        # None while none runs, which is most of the time for most devices: no dict per device
        # (64 bytes each, 64 MB of a million-device run)
        self.transfers: dict[Flow, ObjectFetched] | None = None
        self.waker: Callable[[float], None] | None = None  # wakes the sleeping device for an entry

    def push(self, at: float, entry: Entry) -> None:
        self.seq += 1
        heappush(self.agenda, (at, self.seq, entry))

