"""The strategies: one small class each, as the peers run them (peers-and-rollouts.md §3)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shared.rollout.controller import (
    ABORTED,
    COMMON_OPTIONS,
    PAUSED,
    RUNNING,
    Controller,
    Option,
    RolloutError,
    Tally,
    floats,
    integer,
    number,
    optional_float,
)


def _fraction(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise RolloutError(f"option {name} must lie between 0 and 1, got {value:g}")


class Canary(Controller):
    """`canary_devices` first; when they all finished without more than `canary_max_failures`
    failures, wait `soak_s`, then everyone. Too many canary failures pause the rollout."""

    name = "canary"
    options = {
        **COMMON_OPTIONS,
        "canary_devices": Option(integer, 10),
        "soak_s": Option(number, 3600.0),
        "canary_max_failures": Option(integer, 0),
    }

    def __init__(self, cfg: Any, fleet: int) -> None:
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

    @classmethod
    def check(cls, options: Mapping[str, Any]) -> None:
        if options["canary_devices"] < 1:
            raise RolloutError("option canary_devices must be at least 1")


class Groups(Controller):
    """hawkBit cascade: group k opens when group k-1 reached `success_threshold` successes; a group
    whose failures reach `error_threshold` pauses the rollout (hawkBit's only error action)."""

    name = "groups"
    options = {
        **COMMON_OPTIONS,
        "group_percent": Option(floats, (1.0, 10.0, 50.0, 100.0)),  # cumulative, the last is 100
        "success_threshold": Option(number, 0.5),
        "error_threshold": Option(number, 0.5),
    }

    def __init__(self, cfg: Any, fleet: int) -> None:
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

    @classmethod
    def check(cls, options: Mapping[str, Any]) -> None:
        groups = list(options["group_percent"])
        if not groups or any(not 0 < g <= 100 for g in groups) or groups != sorted(groups):
            raise RolloutError("option group_percent must be increasing cumulative percentages in (0, 100]")
        if groups[-1] != 100:
            raise RolloutError("option group_percent: the last group must reach 100 (percent of the fleet)")
        _fraction("success_threshold", options["success_threshold"])
        _fraction("error_threshold", options["error_threshold"])


class Exponential(Controller):
    """AWS IoT Jobs: notify `base_rate_per_min` devices a minute, multiplying the rate by
    `increment_factor` after every `rate_increase_after_succeeded` successes (0: after each minute's
    batch was notified), capped at `max_per_minute`. Abort (CANCEL) when failures exceed
    `abort_threshold` of executed devices, but only once `min_executed` devices have executed."""

    name = "exponential"
    options = {
        **COMMON_OPTIONS,
        "base_rate_per_min": Option(number, 10.0),
        "increment_factor": Option(number, 2.0),
        "rate_increase_after_succeeded": Option(integer, 0),
        "max_per_minute": Option(number, 1000.0),
        "abort_threshold": Option(number, 0.1),
        "min_executed": Option(integer, 50),
    }

    def __init__(self, cfg: Any, fleet: int) -> None:
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

    @classmethod
    def check(cls, options: Mapping[str, Any]) -> None:
        if options["base_rate_per_min"] < 1 or options["max_per_minute"] < 1:
            raise RolloutError("options base_rate_per_min and max_per_minute must be at least 1")
        if options["increment_factor"] <= 1:
            raise RolloutError("option increment_factor must be above 1")
        _fraction("abort_threshold", options["abort_threshold"])


class MaxUnavailable(Controller):
    """Kubernetes RollingUpdate: at most `max_unavailable` devices (a fraction of the fleet when
    < 1, else a count) mid-update at once; failures free their slot (the device still runs its old
    revision). Optional Swarm-style `max_failure_ratio` pauses the rollout."""

    name = "max-unavailable"
    options = {
        **COMMON_OPTIONS,
        "max_unavailable": Option(number, 0.25),
        "max_failure_ratio": Option(optional_float, None),
    }

    def __init__(self, cfg: Any, fleet: int) -> None:
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

    @classmethod
    def check(cls, options: Mapping[str, Any]) -> None:
        if options["max_unavailable"] <= 0:
            raise RolloutError("option max_unavailable must be above 0")
        if options["max_failure_ratio"] is not None:
            _fraction("max_failure_ratio", options["max_failure_ratio"])


class MaintenanceWindow(Controller):
    """Every device takes the release, but only inside its own local window: device d's clock is
    offset by a time zone spread evenly over `timezones_h`; it starts at its next window opening."""

    name = "maintenance-window"
    options = {
        **COMMON_OPTIONS,
        "window_start_h": Option(number, 2.0),
        "window_length_h": Option(number, 4.0),
        "timezones_h": Option(floats, (-8.0, 3.0)),  # [westmost, eastmost] UTC offsets
    }

    def __init__(self, cfg: Any, fleet: int) -> None:
        super().__init__(cfg, fleet)
        self.low, self.high = cfg.timezones_h

    def admit(self, now: float, tally: Tally) -> tuple[int, float | None]:
        if self.state != RUNNING:
            return 0, None
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

    @classmethod
    def check(cls, options: Mapping[str, Any]) -> None:
        zones = options["timezones_h"]
        if len(zones) != 2 or not all(-12 <= z <= 14 for z in zones) or zones[0] > zones[1]:
            raise RolloutError("option timezones_h must be [westmost, eastmost] UTC offsets in [-12, 14]")
        if not 0 <= options["window_start_h"] < 24 or not 0 < options["window_length_h"] <= 24:
            raise RolloutError("option window_start_h must lie in [0, 24), window_length_h in (0, 24]")
