"""The engine's named timers (ArmTimer / CancelTimer) on the monotonic clock.

The engine has no clock: it arms a timer by name and waits for `TimerFired(name)`. Re-arming a
name replaces the earlier deadline, cancelling forgets it. The daemon asks `next_delay()` how long
it may sleep and collects `due()` names when it wakes.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Timers:
    """Deadlines by name; `now` is injectable so tests need not sleep."""

    def __init__(self, now: Callable[[], float] = time.monotonic):
        self._now = now
        self._deadlines: dict[str, float] = {}

    def arm(self, name: str, delay: float) -> None:
        self._deadlines[name] = self._now() + max(0.0, delay)

    def cancel(self, name: str) -> None:
        self._deadlines.pop(name, None)

    def clear(self) -> None:
        self._deadlines.clear()

    def armed(self) -> dict[str, float]:
        """Seconds left per armed timer (for status output)."""
        now = self._now()
        return {name: max(0.0, at - now) for name, at in self._deadlines.items()}

    def next_delay(self) -> float | None:
        """Seconds until the earliest deadline (0 if one is due), None when nothing is armed."""
        if not self._deadlines:
            return None
        return max(0.0, min(self._deadlines.values()) - self._now())

    def due(self) -> list[str]:
        """Names whose deadline has passed, earliest first; they are disarmed."""
        now = self._now()
        ready = sorted((at, name) for name, at in self._deadlines.items() if at <= now)
        for _, name in ready:
            del self._deadlines[name]
        return [name for _, name in ready]
