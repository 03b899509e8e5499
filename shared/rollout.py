"""The rollout controller: which devices take a release, and when (sans-IO).

A Hub (pvsim's simulated one or pvreal's real one) keeps a `Tally` per release and asks the
controller `admit(now, tally)` when the release starts, after every device report and at the time
the controller asked to be woken. The answer is how many more devices may take the release now and
when to ask again without a report (None: only on reports). A controller may delay one admitted
device (`start_delay`). It also takes the operator's pause, resume and abort. It decides; the Hub
acts, stores `snapshot()` and rebuilds the controller with `restore()`.

The interface has the shape of pvsim/strategies.py (`Tally`, `admit`, `start_delay`, the four
states) so that its strategies can move here unchanged; for now one strategy lives here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

RUNNING, PAUSED, ABORTED, COMPLETED = "running", "paused", "aborted", "completed"
STATES = (RUNNING, PAUSED, ABORTED, COMPLETED)


class RolloutError(ValueError):
    """A release's strategy or options cannot be used."""


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


class Controller:
    name: ClassVar[str] = ""
    # option name -> type, for a Hub's command line and API; values are checked against it
    options: ClassVar[Mapping[str, type]] = {}
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


class AllAtOnce(Controller):
    name = "all-at-once"

    def admit(self, now: float, tally: Tally) -> tuple[int, float | None]:
        if self.state != RUNNING:
            return 0, None
        return self._rest(tally), None


REGISTRY: dict[str, type[Controller]] = {cls.name: cls for cls in (AllAtOnce,)}


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
    """Options typed as the strategy declares them; text (from a command line) is converted."""
    cls = REGISTRY.get(strategy)
    if cls is None:
        raise RolloutError(f"unknown strategy {strategy!r}; expected one of {', '.join(REGISTRY)}")
    typed: dict[str, Any] = {}
    for key, value in raw.items():
        kind = cls.options.get(key)
        if kind is None:
            known = ", ".join(cls.options) or "none"
            raise RolloutError(f"strategy {strategy} has no option {key!r} (options: {known})")
        try:
            typed[key] = kind(value)
        except (TypeError, ValueError):
            raise RolloutError(f"option {key} must be a {kind.__name__}, got {value!r}") from None
    return typed


def make_controller(cfg: RolloutConfig, fleet: int) -> Controller:
    if cfg.strategy not in REGISTRY:
        parse_options(cfg.strategy, {})  # raises naming the known strategies
    return REGISTRY[cfg.strategy](cfg, fleet)
