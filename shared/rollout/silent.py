"""The silent-device rule (sans-IO): a device that took a release and sent no final report within
`device_timeout_s` counts as failed (AWS IoT Jobs' in-progress timeout, TIMED_OUT); a report that
comes after that is ignored, since the Hub already counted the device.

Every deadline is "took the release + the same timeout", so deadlines arrive in order and a FIFO
stays sorted: a Hub needs one pending check per release (at `next_deadline()`), not one per device.
The Hub owns the clock and the timer; this class only keeps the books.

The FIFO is two flat arrays (16 bytes an entry, not a tuple of two boxed numbers: ~110 bytes), and
reports drop the entries at its front that are settled: a million-device run whose timeout
outlasts it no longer keeps ~100 MB of deadlines of devices that reported long ago.
"""

from __future__ import annotations

from array import array

_COMPACT_AT = 4096  # settled entries at the front before the arrays are shifted down


class SilentDevices:
    __slots__ = ("timeout_s", "waiting", "_due", "_who", "_head", "timed_out")

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s  # 0: wait forever
        self.waiting: dict[int, float] = {}  # device -> its deadline, until it reports
        self._due = array("d")  # the deadlines in the order they were set, from _head on
        self._who = array("q")  # the device of each
        self._head = 0
        self.timed_out: list[int] = []  # devices counted failed for their silence, in order

    @property
    def enabled(self) -> bool:
        return self.timeout_s > 0

    def took(self, device: int, now: float) -> None:
        """The device took the release at `now`: its report is due by now + timeout."""
        deadline = now + self.timeout_s
        self.waiting[device] = deadline
        self._due.append(deadline)
        self._who.append(device)

    def reported(self, device: int) -> bool:
        """The device sent its final report. False: it had timed out, the Hub ignores the report."""
        if self.waiting.pop(device, None) is None:
            return False
        self._advance(float("-inf"))  # devices report roughly in the order they took the release
        return True

    def expire(self, now: float) -> list[int]:
        """The devices whose deadline passed by `now` without a report; each counts failed once.
        Also drops the deadlines of devices that reported (or took the release again) meanwhile."""
        expired = self._advance(now)
        self.timed_out.extend(expired)
        return expired

    def _advance(self, now: float) -> list[int]:
        """Take off the front every entry that is due by `now` or settled (its device reported or
        took the release again); the devices among them still waiting have expired."""
        due, who, waiting = self._due, self._who, self.waiting
        head, end = self._head, len(due)
        expired: list[int] = []
        while head < end and (due[head] <= now or waiting.get(who[head]) != due[head]):
            device = who[head]
            if waiting.get(device) == due[head]:
                del waiting[device]
                expired.append(device)
            head += 1
        if head >= _COMPACT_AT and head * 2 >= end:
            del due[:head], who[:head]
            head = 0
        self._head = head
        return expired

    def held(self) -> int:
        """How many deadlines the books still hold (settled ones behind an unsettled one included)."""
        return len(self._due) - self._head

    def next_deadline(self) -> float | None:
        """When the Hub must call `expire` next (None: nobody is waiting)."""
        return self._due[self._head] if self._head < len(self._due) else None
