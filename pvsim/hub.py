"""The hub: offers releases, runs one rollout per release, goes down (its egress: pvsim.transfer).

Idle devices cost nothing: a device only schedules SimPy events once a strategy admits it, and its
first contact is its next poll, computed arithmetically from its poll phase. Outages are a sorted
list of intervals fixed before the run (the scenario's explicit ones plus a Poisson process), so
asking "is the hub up at t?" or "when does the next outage start?" costs a bisect, not an event.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pvsim import scenario
from shared.rollout import (
    REGISTRY,
    Controller,
    RolloutConfig,
    Tally,
    make_controller,
    rollout_state,
)
from shared.rollout.silent import SilentDevices

if TYPE_CHECKING:
    import numpy as np

INF = float("inf")


class HubOutages:
    __slots__ = ("starts", "ends")

    def __init__(self, faults: scenario.Faults, until_s: float, rng: random.Random) -> None:
        spans = [(o.at_s, o.at_s + o.duration_s) for o in faults.hub_outages]
        if faults.hub_outages_per_day > 0:
            rate = faults.hub_outages_per_day / 86400.0
            t = rng.expovariate(rate)
            while t < until_s:
                spans.append((t, t + faults.hub_outage_s.sample(rng)))
                t += rng.expovariate(rate)
        spans.sort()
        merged: list[list[float]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.starts = [s for s, _ in merged]
        self.ends = [e for _, e in merged]

    def down_until(self, t: float) -> float:
        """End of the outage covering t, or 0.0 when the hub is up at t."""
        k = bisect_right(self.starts, t) - 1
        if k >= 0 and t < self.ends[k]:
            return self.ends[k]
        return 0.0

    def next_start(self, t: float) -> float:
        k = bisect_right(self.starts, t)
        return self.starts[k] if k < len(self.starts) else INF

    def __len__(self) -> int:
        return len(self.starts)


@dataclass(slots=True)
class Rollout:
    """One release being rolled out: the strategy's decisions plus what happened to devices."""

    index: int  # position in the scenario's release list (revision index - 1)
    revision: int
    name: str
    at_s: float
    strategy: Controller
    order: np.ndarray  # device indices in admission order (a seeded permutation)
    tally: Tally
    cursor: int = 0
    next_wake: float | None = None
    superseded: bool = False
    committed: int = 0
    rolled_back: int = 0
    wontgo: int = 0
    bricked: int = 0
    exposed: int = 0
    mb_downloaded: float = 0.0
    mb_wasted: float = 0.0
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)  # (outcome, reason) of failures
    # the silent-device rule's books (shared.rollout.silent); the World keeps the timer
    silent: SilentDevices = field(init=False)
    watching: bool = False  # a deadline check is scheduled
    mb_written: float = 0.0
    reboots: int = 0
    commit_times: list[float] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.silent = SilentDevices(self.strategy.cfg.device_timeout_s)

    @property
    def state(self) -> str:
        return rollout_state(self.strategy, self.tally)

    @property
    def timed_out(self) -> list[int]:
        """Devices counted failed for their silence, in the order they timed out."""
        return self.silent.timed_out


def make_strategy(cfg: scenario.Rollout, fleet: int) -> Controller:
    """The shared rollout controller for the scenario's `[rollout]` table (pydantic has validated
    it; the controller reads only its strategy's options)."""
    names = REGISTRY[cfg.strategy].options
    return make_controller(RolloutConfig(cfg.strategy, {k: getattr(cfg, k) for k in names}), fleet)
