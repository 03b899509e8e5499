"""Rollout strategies: one small class each, all speaking one interface.

The hub asks a strategy `admit(now, tally)` at the start of a rollout, after every device report and
at the wake-up time the strategy asked for. The answer is how many more devices may take the release
now (the hub picks them in a seeded random order) and when to ask again without a report
(None: only on reports). A strategy may also delay one admitted device (`start_delay`), which is how
maintenance windows keep devices waiting for their local night. Strategies decide; the hub acts.

Knobs and defaults follow peers-and-rollouts.md §3: hawkBit groups (50 % success → next group,
50 % error → pause), AWS IoT Jobs exponential rate with an abort threshold that only fires after a
minimum number of executed things, Kubernetes maxUnavailable (25 %), canary then soak then all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from pvsim.scenario import Rollout

RUNNING, PAUSED, ABORTED, COMPLETED = "running", "paused", "aborted", "completed"


@dataclass(slots=True)
class Tally:
    """What the hub knows about one rollout. `failed` counts ERROR, WONTGO and bricked devices."""

    fleet: int
    admitted: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def executed(self) -> int:
        return self.succeeded + self.failed

    @property
    def in_flight(self) -> int:
        return self.admitted - self.executed


class Strategy:
    name: ClassVar[str] = ""
    state: str

    def __init__(self, cfg: Rollout, fleet: int) -> None:
        self.cfg = cfg
        self.fleet = fleet
        self.state = RUNNING
        self.halted_at: float | None = None

    def admit(self, now: float, tally: Tally) -> tuple[int, float | None]:
        raise NotImplementedError

    def start_delay(self, device: int, now: float) -> float:
        return 0.0

    def _halt(self, state: str, now: float) -> tuple[int, None]:
        self.state = state
        self.halted_at = now
        return 0, None

    def _rest(self, tally: Tally) -> int:
        return self.fleet - tally.admitted


class AllAtOnce(Strategy):
    name = "all-at-once"

    def admit(self, now: float, tally: Tally) -> tuple[int, float | None]:
        return self._rest(tally), None


class Canary(Strategy):
    """`canary_devices` first; when they all finished without more than `canary_max_failures`
    failures, wait `soak_s`, then everyone. Too many canary failures pause the rollout."""

    name = "canary"

    def __init__(self, cfg: Rollout, fleet: int) -> None:
        super().__init__(cfg, fleet)
        self.canaries = min(cfg.canary_devices, fleet)
        self.soak_until: float | None = None

    def admit(self, now: float, tally: Tally) -> tuple[int, float | None]:
        if self.state != RUNNING:
            return 0, None
        if tally.admitted == 0:
            return self.canaries, None
        if tally.failed > self.cfg.canary_max_failures and tally.admitted == self.canaries:
            return self._halt(PAUSED, now)
        if tally.admitted > self.canaries:
            return 0, None
        if tally.executed < self.canaries:
            return 0, None
        if self.soak_until is None:
            self.soak_until = now + self.cfg.soak_s
        if now < self.soak_until:
            return 0, self.soak_until
        return self._rest(tally), None


class Groups(Strategy):
    """hawkBit cascade: group k opens when group k-1 reached `success_threshold` successes; a group
    whose failures reach `error_threshold` pauses the rollout (hawkBit's only error action)."""

    name = "groups"

    def __init__(self, cfg: Rollout, fleet: int) -> None:
        super().__init__(cfg, fleet)
        bounds = [math.ceil(fleet * p / 100) for p in cfg.group_percent]
        self.bounds = [b for i, b in enumerate(bounds) if b > 0 and (i == 0 or b > bounds[i - 1])]
        self.group = 0
        self.group_start = 0  # admitted count when the current group opened
        self.base_succeeded = 0
        self.base_failed = 0

    def admit(self, now: float, tally: Tally) -> tuple[int, float | None]:
        if self.state != RUNNING:
            return 0, None
        if tally.admitted == 0:
            return self.bounds[0], None
        size = self.bounds[self.group] - self.group_start
        failed = tally.failed - self.base_failed
        succeeded = tally.succeeded - self.base_succeeded
        if failed >= self.cfg.error_threshold * size and failed > 0:
            return self._halt(PAUSED, now)
        if self.group + 1 < len(self.bounds) and succeeded >= self.cfg.success_threshold * size:
            self.group_start = self.bounds[self.group]
            self.base_succeeded, self.base_failed = tally.succeeded, tally.failed
            self.group += 1
            return self.bounds[self.group] - tally.admitted, None
        return 0, None


class Exponential(Strategy):
    """AWS IoT Jobs: notify `base_rate_per_min` devices a minute, multiplying the rate by
    `increment_factor` after every `rate_increase_after_succeeded` successes (0: after each minute's
    batch was notified), capped at `max_per_minute`. Abort (CANCEL) when failures exceed
    `abort_threshold` of executed devices, but only once `min_executed` devices have executed."""

    name = "exponential"

    def __init__(self, cfg: Rollout, fleet: int) -> None:
        super().__init__(cfg, fleet)
        self.rate = cfg.base_rate_per_min
        self.next_minute = 0.0
        self.succeeded_at_increase = 0

    def admit(self, now: float, tally: Tally) -> tuple[int, float | None]:
        if self.state != RUNNING:
            return 0, None
        cfg = self.cfg
        if tally.executed >= cfg.min_executed and tally.failed > cfg.abort_threshold * tally.executed:
            return self._halt(ABORTED, now)
        if now < self.next_minute:
            return 0, self.next_minute
        if cfg.rate_increase_after_succeeded == 0:
            increase = tally.admitted > 0  # the previous minute's batch was notified
        else:
            increase = tally.succeeded - self.succeeded_at_increase >= cfg.rate_increase_after_succeeded
        if increase:
            self.rate = min(self.rate * cfg.increment_factor, cfg.max_per_minute)
            self.succeeded_at_increase = tally.succeeded
        batch = min(int(self.rate), self._rest(tally))
        self.next_minute = now + 60.0
        if tally.admitted + batch >= self.fleet:
            return batch, None
        return batch, self.next_minute


class MaxUnavailable(Strategy):
    """Kubernetes RollingUpdate: at most `max_unavailable` devices (a fraction of the fleet when
    < 1, else a count) mid-update at once; failures free their slot (the device still runs its old
    revision). Optional Swarm-style `max_failure_ratio` pauses the rollout."""

    name = "max-unavailable"

    def __init__(self, cfg: Rollout, fleet: int) -> None:
        super().__init__(cfg, fleet)
        limit = cfg.max_unavailable
        self.limit = max(1, math.floor(limit * fleet) if limit < 1 else int(limit))

    def admit(self, now: float, tally: Tally) -> tuple[int, float | None]:
        if self.state != RUNNING:
            return 0, None
        ratio = self.cfg.max_failure_ratio
        if ratio is not None and tally.executed and tally.failed > ratio * tally.executed:
            return self._halt(PAUSED, now)
        return max(0, min(self.limit - tally.in_flight, self._rest(tally))), None


class MaintenanceWindow(Strategy):
    """Every device takes the release, but only inside its own local window: device d's clock is
    offset by a time zone spread evenly over `timezones_h`; it starts at its next window opening."""

    name = "maintenance-window"

    def __init__(self, cfg: Rollout, fleet: int) -> None:
        super().__init__(cfg, fleet)
        self.low, self.high = cfg.timezones_h

    def admit(self, now: float, tally: Tally) -> tuple[int, float | None]:
        return self._rest(tally), None

    def zone_h(self, device: int) -> float:
        if self.fleet == 1:
            return self.low
        # whole-hour zones spread evenly across the range, deterministic per device
        span = round(self.high - self.low)
        return self.low + (device * 2654435761 % (span + 1))

    def start_delay(self, device: int, now: float) -> float:
        local_h = ((now / 3600.0) + self.zone_h(device)) % 24.0
        start, length = self.cfg.window_start_h, self.cfg.window_length_h
        into = (local_h - start) % 24.0
        if into < length:
            return 0.0
        return (24.0 - into) * 3600.0


REGISTRY: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (AllAtOnce, Canary, Groups, Exponential, MaxUnavailable, MaintenanceWindow)
}


def make_strategy(cfg: Rollout, fleet: int) -> Strategy:
    return REGISTRY[cfg.strategy](cfg, fleet)
