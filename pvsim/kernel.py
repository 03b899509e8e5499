"""The SimPy environment the twin runs in: stock SimPy that also counts every scheduled event.

`pvsim bench` and results.json report `events`; counting inside `schedule` (the one place every
timeout, process start and process end passes through) makes that number exact and cheap.
"""

from __future__ import annotations

from heapq import heappush
from typing import Any

import simpy
from simpy.core import NORMAL


class CountingEnvironment(simpy.Environment):
    def __init__(self, initial_time: float = 0) -> None:
        super().__init__(initial_time)
        self.events = 0

    def schedule(self, event: simpy.Event, priority: int = NORMAL, delay: float = 0) -> None:
        self.events += 1
        heappush(self._queue, (self._now + delay, priority, next(self._eid), event))

    def run(self, until: Any = None) -> Any:
        """`Environment.run`, without counting its own bookkeeping: a time `until` schedules a stop
        event, which SimPy schedules again when it stops the run. Neither is the twin's, so a run
        in one call and a run in chunks (the progress bar, shard epochs) count the same events."""
        stops = until is not None and not isinstance(until, simpy.Event)
        value = super().run(until)
        if stops:
            self.events -= 2
        return value
