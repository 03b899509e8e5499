"""The SimPy environment the twin runs in: stock SimPy that also counts every scheduled event, and
schedules plain calls.

`pvsim bench` and results.json report `events`; counting inside `schedule` (the one place every
timeout, process start and process end passes through) makes that number exact and cheap.

`call_later` is how a device waits. A generator process that yields a Timeout costs SimPy a Timeout
object, a bound-method lookup, `Process._resume` and a generator resume on every wake; a `Call`
is a queue entry whose one callback is the device's next step, so the wake costs the heap and
one call. It is still one SimPy event, scheduled and counted like any other, ordered with the
same priority as a Timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappush
from typing import Any

import simpy
from simpy.core import NORMAL
from simpy.events import EventPriority


class Call:
    """A SimPy queue entry that calls `fn(self)` when it comes up. `Environment.step` reads only
    `callbacks` (and clears it) and `_ok` (a call never fails)."""

    __slots__ = ("callbacks",)
    _ok = True

    def __init__(self, fn: Callable[[Any], None]) -> None:
        self.callbacks = (fn,)


class CountingEnvironment(simpy.Environment):
    def __init__(self, initial_time: float = 0) -> None:
        super().__init__(initial_time)
        self.events = 0

    def schedule(
        self, event: simpy.Event, priority: EventPriority = NORMAL, delay: float = 0
    ) -> None:
        self.events += 1
        heappush(self._queue, (self._now + delay, priority, next(self._eid), event))

    def call_later(self, delay: float, fn: Callable[[Any], None]) -> Call:
        """Call `fn(call)` after `delay` simulated seconds: one event, timed as `timeout(delay)`.
        Returns the call, which `fn` receives: a caller that rescheduled can tell a stale one."""
        self.events += 1
        call = Call(fn)
        # a Call stands in for an Event (see Call), which the queue's element type cannot say
        heappush(self._queue, (self._now + delay, NORMAL, next(self._eid), call))  # type: ignore[misc]
        return call

    def run(self, until: Any = None) -> Any:
        """`Environment.run`, without counting its own bookkeeping: a time `until` schedules a stop
        event, which SimPy schedules again when it stops the run. Neither is the twin's, so a run
        in one call and a run in chunks (the progress bar, shard epochs) count the same events."""
        stops = until is not None and not isinstance(until, simpy.Event)
        value = super().run(until)
        if stops:
            self.events -= 2
        return value
