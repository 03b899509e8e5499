"""The SimPy environment the twin runs in: SimPy's events and processes over a calendar queue that
stays small however many devices wait, a run loop without SimPy's per-event overhead, and a count
of every scheduled event.

`pvsim bench` and results.json report `events`; counting inside `schedule` (the one place every
timeout, process start and process end passes through) and `call_later` makes that number exact
and cheap.

`call_later` is how a device waits. A generator process that yields a Timeout costs SimPy a Timeout
object, a bound-method lookup, `Process._resume` and a generator resume on every wake; a call
is a queue entry whose one callback is the device's next step, so the wake costs the queue and
one call. It is still one event, scheduled and counted like any other, ordered with the same
priority as a Timeout.

The queue. SimPy keeps every scheduled event in one binary heap, and a large fleet keeps hundreds
of thousands of devices waiting there (admitted devices waiting for their next poll, devices
waiting for a transfer or a timer): a pop then costs ~19 tuple comparisons over memory that is no
longer in any cache, and the cost per device-update grew with the fleet. Here the events are
filed by time into buckets `BUCKET_S` wide (a calendar queue): filing one is an append; a bucket
is sorted once when the clock reaches it, and popped from its end; what is scheduled into the
bucket already open goes to a small heap beside it. Events come out in exactly SimPy's order, by
(time, priority, id): buckets partition time, so everything in a later bucket comes after
everything open, and the open bucket and the small heap are merged entry by entry. Results are
therefore the same as on SimPy's own queue.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

import simpy
from simpy.core import NORMAL, URGENT, EmptySchedule, StopSimulation
from simpy.events import EventPriority

BUCKET_S = 1.0  # width of a calendar bucket, simulated seconds
_FAR = 1e15  # times past this (an infinite delay) share the last bucket
_LAST = 1 << 62
INF = float("inf")

Entry = tuple[float, int, int, Any]  # (time, priority, event id, event or call): SimPy's order


# A call is a one-item list `[fn]` in the queue: `fn(call)` runs when it comes up (it never fails).
# A list, not a class, because building one is a single C call, and nothing SimPy schedules is one.
Call = list


class CountingEnvironment(simpy.Environment):
    def __init__(self, initial_time: float = 0) -> None:
        super().__init__(initial_time)
        self.events = 0
        self._per_s = 1.0 / BUCKET_S
        self._open = int(initial_time * self._per_s)  # the open bucket: everything up to its end
        self._sorted: list[Entry] = []  # its entries filed before it opened, latest first
        self._soon: list[Entry] = []  # heap: entries scheduled into it since it opened
        self._buckets: dict[int, list[Entry]] = {}  # later buckets, unsorted
        self._bucket_ids: list[int] = []  # heap of the keys of _buckets

    # -- the queue -------------------------------------------------------------------------------
    def _file(self, entry: Entry) -> None:
        t = entry[0]
        b = int(t * self._per_s) if t < _FAR else _LAST
        if b <= self._open:
            heappush(self._soon, entry)
            return
        bucket = self._buckets.get(b)
        if bucket is None:
            self._buckets[b] = [entry]
            heappush(self._bucket_ids, b)
        else:
            bucket.append(entry)

    def _pop(self) -> Entry | None:
        """The next entry in SimPy's order, or None when nothing is scheduled."""
        ordered, soon = self._sorted, self._soon
        if ordered:
            if soon and soon[0] < ordered[-1]:
                return heappop(soon)
            return ordered.pop()
        if soon:
            return heappop(soon)
        if not self._bucket_ids:
            return None
        self._open = heappop(self._bucket_ids)
        ordered = self._sorted = self._buckets.pop(self._open)
        ordered.sort(reverse=True)  # ids are unique, so no two entries compare equal
        return ordered.pop()

    def _unpop(self, entry: Entry) -> None:
        """Put back the entry just popped (the earliest of all: its bucket is open)."""
        heappush(self._soon, entry)

    def queued(self) -> int:
        """How many events are scheduled."""
        return len(self._sorted) + len(self._soon) + sum(len(b) for b in self._buckets.values())

    # -- SimPy's interface -------------------------------------------------------------------------
    def schedule(self, event: simpy.Event, priority: EventPriority = NORMAL, delay: float = 0) -> None:
        self.events += 1
        self._file((self._now + delay, priority, next(self._eid), event))

    def call_later(self, delay: float, fn: Callable[[Any], None]) -> list:
        """Call `fn(call)` after `delay` simulated seconds: one event, timed as `timeout(delay)`.
        Returns the call, which `fn` receives: a caller that rescheduled can tell a stale one."""
        return self.call_at(self._now + delay, fn)

    def call_later_with(self, delay: float, fn: Callable[[Any], None], *data: Any) -> list:
        """`call_later` for a callback that needs data: the call is `[fn, *data]`, which `fn`
        receives. A closure over the data would add a function, a tuple and a cell per item (~200
        bytes by their sizes, for each of the hundreds of thousands of devices waiting for a first
        poll)."""
        self.events += 1
        call = [fn, *data]
        self._file((self._now + delay, NORMAL, next(self._eid), call))
        return call

    def call_at(self, t: float, fn: Callable[[Any], None]) -> list:
        """`call_later`, at the time `t` (not before now). A device that plans its next wake-up
        from a later instant than now (the end of the writes under way) gives that time exactly
        as `call_later` would give it at that instant: `later + (wake - later)` in floating point."""
        self.events += 1
        call = [fn]
        entry = (t, NORMAL, next(self._eid), call)
        # self._file(entry), inlined: every wait of every device comes through here
        b = int(t * self._per_s) if t < _FAR else _LAST
        if b <= self._open:
            heappush(self._soon, entry)
        else:
            bucket = self._buckets.get(b)
            if bucket is None:
                self._buckets[b] = [entry]
                heappush(self._bucket_ids, b)
            else:
                bucket.append(entry)
        return call

    def peek(self) -> float:
        entry = self._pop()
        if entry is None:
            return INF
        self._unpop(entry)
        return entry[0]

    def step(self) -> None:
        entry = self._pop()
        if entry is None:
            raise EmptySchedule
        self._now = entry[0]
        self._fire(entry[3])

    def _fire(self, event: Any) -> None:
        """SimPy's `step` after the pop: run the callbacks, crash on a failed event nobody handled."""
        if type(event) is list:
            event[0](event)
            return
        callbacks, event.callbacks = event.callbacks, None
        try:
            for callback in callbacks:
                callback(event)
        except StopSimulation:
            event.callbacks = callbacks[callbacks.index(callback) + 1 :]
            self.schedule(event, EventPriority(-1))
            raise
        if not event._ok and not hasattr(event, "_defused"):
            exc = type(event._value)(*event._value.args)
            exc.__cause__ = event._value
            raise exc

    def run(self, until: Any = None) -> Any:
        """`Environment.run`. A time `until` stops before the first event SimPy would run after its
        own stop event (scheduled URGENT at `until` when the run starts), without scheduling one:
        so a run in one call and a run in chunks (the progress bar, shard epochs) count and order
        the same events. An event `until` is SimPy's own loop over `step`."""
        if until is not None and isinstance(until, simpy.Event):
            return super().run(until)
        stop_at: float = INF
        stop_id = 0
        if until is not None:
            stop_at = until if isinstance(until, int) else float(until)
            if stop_at <= self._now:
                raise ValueError(f"until ({stop_at}) must be greater than the current simulation time")
            stop_id = next(self._eid)  # where SimPy's stop event would stand among equal times
        pop, fire = self._pop, self._fire
        ordered, soon = self._sorted, self._soon
        while True:
            # self._pop(), inlined for the open bucket (the usual case)
            if ordered:
                entry = heappop(soon) if soon and soon[0] < ordered[-1] else ordered.pop()
            elif soon:
                entry = heappop(soon)
            else:
                entry = pop()  # opens the next bucket
                ordered = self._sorted
                if entry is None:
                    if stop_at < INF:
                        self._now = stop_at  # cannot happen on SimPy's queue (its stop event is there)
                    return None
            t = entry[0]
            if t >= stop_at and (t > stop_at or (entry[1], entry[2]) > (URGENT, stop_id)):
                self._unpop(entry)
                self._now = stop_at
                return None
            self._now = t
            event = entry[3]
            if type(event) is list:
                event[0](event)  # a call
            else:
                fire(event)
                ordered = self._sorted  # a callback may have stepped or peeked the queue
