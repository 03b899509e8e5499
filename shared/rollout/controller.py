"""The rollout controller's interface: the tally, options, the base class, decisions (sans-IO)."""

from __future__ import annotations

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
    return tuple(number(x) for x in items)


def optional_float(value: Any) -> float | None:
    """A number, or nothing (`none` or empty text, JSON null)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    return number(value)


def number(value: Any) -> float:
    if isinstance(value, bool):  # float(True) is 1.0: a typo, not a number
        raise ValueError(value)
    return float(value)


def integer(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


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

    def __post_init__(self) -> None:
        # Each option is also an instance attribute, so `cfg.error_threshold` is a plain lookup: a
        # name found only by __getattr__ costs a raised and caught AttributeError first, and
        # strategies read their options on every admit (the quickstart's 20 000 reports: ~2 % of
        # its simulation). Not a field: equality, hashing and repr still see `options` only.
        for name, value in self.options.items():
            if name not in ("strategy", "options"):
                object.__setattr__(self, name, value)

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
COMMON_OPTIONS: dict[str, Option] = {"device_timeout_s": Option(number, 86400.0)}


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
