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

from collections.abc import Mapping
from typing import Any

from shared.rollout.controller import (
    ABORTED,
    COMMON_OPTIONS,
    COMPLETED,
    PAUSED,
    RUNNING,
    STATES,
    AllAtOnce,
    Controller,
    Decision,
    Option,
    RolloutConfig,
    RolloutError,
    Tally,
    decide,
    floats,
    optional_float,
    rollout_state,
)
from shared.rollout.strategies import Canary, Exponential, Groups, MaintenanceWindow, MaxUnavailable

__all__ = [
    "ABORTED", "COMMON_OPTIONS", "COMPLETED", "PAUSED", "REGISTRY", "RUNNING", "STATES", "AllAtOnce",
    "Canary", "Controller", "Decision", "Exponential", "Groups", "MaintenanceWindow", "MaxUnavailable",
    "Option", "RolloutConfig", "RolloutError", "Tally", "decide", "floats", "make_controller",
    "optional_float", "parse_options", "rollout_state", "with_defaults",
]  # fmt: skip

REGISTRY: dict[str, type[Controller]] = {
    cls.name: cls for cls in (AllAtOnce, Canary, Groups, Exponential, MaxUnavailable, MaintenanceWindow)
}


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
