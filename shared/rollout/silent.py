"""The silent-device rule (sans-IO): a device that took a release and sent no final report within
`device_timeout_s` counts as failed (AWS IoT Jobs' in-progress timeout, TIMED_OUT); a report that
comes after that is ignored, since the Hub already counted the device.

Every deadline is "took the release + the same timeout", so deadlines arrive in order and a FIFO
stays sorted: a Hub needs one pending check per release (at `next_deadline()`), not one per device.
The Hub owns the clock and the timer; this class only keeps the books.
"""

from __future__ import annotations

from collections import deque


class SilentDevices:
    __slots__ = ("timeout_s", "waiting", "deadlines", "timed_out")

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s  # 0: wait forever
        self.waiting: dict[int, float] = {}  # device -> its deadline, until it reports
        self.deadlines: deque[tuple[float, int]] = deque()  # in the order they were set
        self.timed_out: list[int] = []  # devices counted failed for their silence, in order

    @property
    def enabled(self) -> bool:
        return self.timeout_s > 0

    def took(self, device: int, now: float) -> None:
        """The device took the release at `now`: its report is due by now + timeout."""
        deadline = now + self.timeout_s
        self.waiting[device] = deadline
        self.deadlines.append((deadline, device))

    def reported(self, device: int) -> bool:
        """The device sent its final report. False: it had timed out, the Hub ignores the report."""
        return self.waiting.pop(device, None) is not None

    def expire(self, now: float) -> list[int]:
        """The devices whose deadline passed by `now` without a report; each counts failed once.
        Also drops the deadlines of devices that reported (or took the release again) meanwhile."""
        queue, waiting = self.deadlines, self.waiting
        expired: list[int] = []
        while queue and (queue[0][0] <= now or waiting.get(queue[0][1]) != queue[0][0]):
            deadline, device = queue.popleft()
            if waiting.get(device) == deadline:
                del waiting[device]
                expired.append(device)
        self.timed_out.extend(expired)
        return expired

    def next_deadline(self) -> float | None:
        """When the Hub must call `expire` next (None: nobody is waiting)."""
        return self.deadlines[0][0] if self.deadlines else None
