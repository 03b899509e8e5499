"""The rollout controller: which devices take a release, and when (sans-IO).

A Hub (pvsim's simulated one or pvreal's real one) keeps a `Tally` per release and asks the
controller `admit(now, tally)` when the release starts, after every device report and at the time
the controller asked to be woken. The answer is how many more devices may take the release now and
when to ask again without a report (None: only on reports). A controller may delay one admitted
device (`start_delay`). It also takes the operator's pause, resume and abort. It decides; the Hub
acts, stores `snapshot()` and rebuilds the controller with `restore()`.

Both Hubs build their controllers here: pvsim from the scenario's `[rollout]` table, the real Hub
from `pvreal hub release --strategy S --set KEY=VALUE`. Each strategy declares its options with a
parser and a default (the defaults equal pvsim's scenario defaults; a test checks it).

Knobs and defaults follow peers-and-rollouts.md §3: hawkBit groups (50 % success → next group,
50 % error → pause), AWS IoT Jobs exponential rate with an abort threshold that only fires after a
minimum number of executed things, Kubernetes maxUnavailable (25 %), canary then soak then all.
Strategies decide counts; the Hub picks which devices (its seeded order), so no randomness here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

RUNNING, PAUSED, ABORTED, COMPLETED = "running", "paused", "aborted", "completed"
STATES = (RUNNING, PAUSED, ABORTED, COMPLETED)


class RolloutError(ValueError):
    """A release's strategy or options cannot be used."""


def floats(value: Any) -> tuple[float, ...]:
    """A list of numbers: a JSON list or comma-separated text (`10,50,100`)."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, (int, float)) or not hasattr(items, "__iter__"):
        raise ValueError(value)
    return tuple(_number(x) for x in items)


def optional_float(value: Any) -> float | None:
    """A number, or nothing (`none` or empty text, JSON null)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    return _number(value)


def _number(value: Any) -> float:
    if isinstance(value, bool):  # float(True) is 1.0: a typo, not a number
        raise ValueError(value)
    return float(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


_number.__name__, _integer.__name__ = "number", "integer"
floats.__name__ = "list of numbers"
optional_float.__name__ = "number or none"


@dataclass(frozen=True, slots=True)
class Option:
    parse: Callable[[Any], Any]
    default: Any


@dataclass(slots=True)
class Tally:
    """What the Hub knows about one rollout. `failed` counts ERROR, WONTGO and bricked devices."""

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


@dataclass(frozen=True)
class RolloutConfig:
    """A strategy name and its options. Options read as attributes (`cfg.soak_s`), as pvsim's
    scenario `Rollout` model reads them, so one controller class serves both Hubs."""

    strategy: str = "all-at-once"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.options[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True, slots=True)
class Decision:
    """What the Hub does now: admit `admit` more devices, record `state`, ask again at `wake_at`."""

    admit: int
    state: str
    wake_at: float | None


# every strategy: a device that took the release and sent no final report within this many seconds
# counts as failed (AWS IoT Jobs' in-progress timeout, TIMED_OUT); 0: wait forever
COMMON_OPTIONS: dict[str, Option] = {"device_timeout_s": Option(_number, 86400.0)}


class Controller:
    name: ClassVar[str] = ""
    # option name -> its parser and default, for a Hub's command line and API
    options: ClassVar[Mapping[str, Option]] = COMMON_OPTIONS
    state: str

    def __init__(self, cfg: Any, fleet: int) -> None:
        self.cfg = cfg
        self.fleet = fleet
        self.state = RUNNING
        self.halted_at: float | None = None

    def admit(self, now: float, tally: Tally) -> tuple[int, float | None]:
        raise NotImplementedError

    def start_delay(self, device: int, now: float) -> float:
        return 0.0

    # -- the operator

    def pause(self, now: float) -> None:
        if self.state == RUNNING:
            self._halt(PAUSED, now)

    def resume(self, now: float) -> None:
        if self.state == PAUSED:
            self.state, self.halted_at = RUNNING, None

    def abort(self, now: float) -> None:
        if self.state in (RUNNING, PAUSED):
            self._halt(ABORTED, now)

    # -- persistence: everything but the configuration, as JSON values

    def snapshot(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k not in ("cfg", "fleet")}

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        vars(self).update(snapshot)

    def _halt(self, state: str, now: float) -> tuple[int, None]:
        self.state = state
        self.halted_at = now
        return 0, None

    def _rest(self, tally: Tally) -> int:
        return self.fleet - tally.admitted

    @classmethod
    def check(cls, options: Mapping[str, Any]) -> None:
        """Raise RolloutError when the options (defaults filled in) do not fit together."""


class AllAtOnce(Controller):
    name = "all-at-once"

    def admit(self, now: float, tally: Tally) -> tuple[int, float | None]:
        if self.state != RUNNING:
            return 0, None
        return self._rest(tally), None


def _fraction(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise RolloutError(f"option {name} must lie between 0 and 1, got {value:g}")


class Canary(Controller):
    """`canary_devices` first; when they all finished without more than `canary_max_failures`
    failures, wait `soak_s`, then everyone. Too many canary failures pause the rollout."""

    name = "canary"
    options = {
        **COMMON_OPTIONS,
        "canary_devices": Option(_integer, 10),
        "soak_s": Option(_number, 3600.0),
        "canary_max_failures": Option(_integer, 0),
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
        "success_threshold": Option(_number, 0.5),
        "error_threshold": Option(_number, 0.5),
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
        "base_rate_per_min": Option(_number, 10.0),
        "increment_factor": Option(_number, 2.0),
        "rate_increase_after_succeeded": Option(_integer, 0),
        "max_per_minute": Option(_number, 1000.0),
        "abort_threshold": Option(_number, 0.1),
        "min_executed": Option(_integer, 50),
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
        "max_unavailable": Option(_number, 0.25),
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
        "window_start_h": Option(_number, 2.0),
        "window_length_h": Option(_number, 4.0),
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


REGISTRY: dict[str, type[Controller]] = {
    cls.name: cls for cls in (AllAtOnce, Canary, Groups, Exponential, MaxUnavailable, MaintenanceWindow)
}


def rollout_state(controller: Controller, tally: Tally) -> str:
    """The release's state: the controller's halt, or completed once every device has answered."""
    if controller.state != RUNNING:
        return controller.state
    if tally.admitted >= tally.fleet and tally.in_flight == 0:
        return COMPLETED
    return RUNNING


def decide(controller: Controller, now: float, tally: Tally) -> Decision:
    """Ask the controller once and say what the Hub must do; admissions never exceed the fleet."""
    count, wake_at = controller.admit(now, tally) if controller.state == RUNNING else (0, None)
    count = max(0, min(count, tally.fleet - tally.admitted))
    after = Tally(tally.fleet, tally.admitted + count, tally.succeeded, tally.failed)
    state = rollout_state(controller, after)
    return Decision(count, state, wake_at if state == RUNNING else None)


def parse_options(strategy: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Options typed as the strategy declares them; text (from a command line) and JSON lists are
    converted. Only the options given are returned; `make_controller` fills in the defaults."""
    cls = REGISTRY.get(strategy)
    if cls is None:
        raise RolloutError(f"unknown strategy {strategy!r}; expected one of {', '.join(REGISTRY)}")
    typed: dict[str, Any] = {}
    for key, value in raw.items():
        option = cls.options.get(key)
        if option is None:
            known = ", ".join(cls.options) or "none"
            raise RolloutError(f"strategy {strategy} has no option {key!r} (options: {known})")
        try:
            typed[key] = option.parse(value)
        except (TypeError, ValueError):
            raise RolloutError(f"option {key} must be a {option.parse.__name__}, got {value!r}") from None
    if typed.get("device_timeout_s", 0) < 0:
        raise RolloutError("option device_timeout_s must be at least 0")
    cls.check(with_defaults(cls, typed))
    return typed


def with_defaults(cls: type[Controller], options: Mapping[str, Any]) -> dict[str, Any]:
    return {**{k: o.default for k, o in cls.options.items()}, **options}


def make_controller(cfg: RolloutConfig, fleet: int) -> Controller:
    if cfg.strategy not in REGISTRY:
        parse_options(cfg.strategy, {})  # raises naming the known strategies
    cls = REGISTRY[cfg.strategy]
    return cls(RolloutConfig(cfg.strategy, with_defaults(cls, cfg.options)), fleet)
