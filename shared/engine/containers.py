"""Containers of the running revision: group start order, status goals, auto-recovery (§4).

This is the engine's sub-machine for one running revision. It never decides what a failure means
for an update; it returns a verdict and the Updater's table decides (rollback during an update,
reboot in steady state).

Rules kept here (pantavisor.md §4):
- Groups start in declared order; a group starts when every earlier group is ACHIEVED or TIMEDOUT.
  All containers of a group start together, and the group's goal timer (its `timeout`, else
  PV_UPDATER_GOALS_TIMEOUT) starts then.
- A container has reached its goal when goal <= status <= READY (status order of §4.1). READY needs
  the `ready` signal, which is ignored for containers whose goal is not READY.
- On exit: without auto_recovery in force (a container's "no" takes its group's; only "on-failure"
  and "always" recover, "unless-stopped" does not) the verdict is FAILED. With it: the retry counter
  resets when the container ran longer than `reset_window`; when `max_retries` (> 0) is reached the
  verdict is FAILED during an update, else `backoff_policy` decides (reboot → FAILED, never → stay
  stopped, a duration → wait, reset, start over); otherwise restart after
  int(retry_delay × backoff_factor^(retries-1)), the factor only when above 1.0 (0 → at once).
- `stable_timeout`: armed once when the container reaches its goal; a crash resets the window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from typing import TYPE_CHECKING

from shared.engine.commands import ArmTimer, CancelTimer, Command, StartContainers

if TYPE_CHECKING:
    from shared.state import AutoRecovery, Container, State


class CStatus(IntEnum):
    """§4.1 status order (goal checks compare positions)."""

    NONE = 0
    INSTALLED = 1
    MOUNTED = 2
    BLOCKED = 3
    STARTING = 4
    STARTED = 5
    READY = 6
    RECOVERING = 7
    STOPPING = 8
    STOPPED = 9


_GOAL = {"MOUNTED": CStatus.MOUNTED, "STARTED": CStatus.STARTED, "READY": CStatus.READY}


class Verdict:
    FAILED = "container:failed"  # a container exited and auto-recovery did not absorb it
    TIMEDOUT = "goals:timedout"  # a group's goal timer ran out
    ACHIEVED = "goals:achieved"  # every group reached its goal
    STABLE = "containers:stable"  # every stable_timeout window has been survived


def parse_duration(text: str) -> float | None:
    """`30s`, `10min`, `1h`, `45` → seconds; None when it is not a duration."""
    for suffix, factor in (("min", 60.0), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)], factor
            break
    else:
        scale = 1.0
    try:
        value = float(text)
    except ValueError:
        return None
    return value * scale if value >= 0 else None


# pv_state_check_auto_recovery restarts only these; "unless-stopped" parses but never recovers
RECOVERING_POLICIES = frozenset({"on-failure", "always"})


def retry_delay(ar: AutoRecovery, attempt: int) -> int:
    """`pv_state_check_auto_recovery`: whole seconds; from the second attempt on, and only when
    the factor is above 1.0, `retry_delay * factor^(attempt-1)` truncated to an integer."""
    delay = int(ar.retry_delay)
    if attempt > 1 and ar.backoff_factor > 1.0:
        delay = int(delay * ar.backoff_factor ** (attempt - 1))
    return delay


def _recovery_of(state: State, spec: Container) -> AutoRecovery | None:
    own = spec.auto_recovery
    if own is not None and own.policy != "no":
        return own
    group = next((g for g in state.groups if g.name == spec.group), None)
    if group is not None and group.auto_recovery is not None and group.auto_recovery.policy != "no":
        return group.auto_recovery
    return own


class _Rec:
    __slots__ = ("spec", "goal", "group", "status", "retries", "stable", "given_up")

    def __init__(self, spec: Container, group: int):
        self.spec = spec
        self.goal = _GOAL[str(spec.status_goal)]
        self.group = group
        self.status = CStatus.INSTALLED
        self.retries = 0
        self.stable = False
        self.given_up = False

    def copy(self) -> _Rec:
        new = _Rec.__new__(_Rec)
        new.spec, new.goal, new.group = self.spec, self.goal, self.group
        new.status, new.retries, new.stable, new.given_up = self.status, self.retries, self.stable, self.given_up
        return new

    def fingerprint(self) -> tuple:
        # spec, goal and group follow from the revision's state (in Containers.fingerprint)
        return (self.status, self.retries, self.stable, self.given_up)

    @property
    def achieved(self) -> bool:
        return self.goal <= self.status <= CStatus.READY


_BLOCKED, _STARTED, _ACHIEVED, _TIMEDOUT = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Layout:
    """What a revision's groups look like to the start logic; shared by every device (cached)."""

    group_names: tuple[str, ...]
    group_members: tuple[tuple[str, ...], ...]
    group_of: Mapping[str, int]
    goal_timers: tuple[ArmTimer, ...]  # the ArmTimer command of each group, built once
    goal_cancels: tuple[CancelTimer, ...]
    recovery: Mapping[str, AutoRecovery | None]  # each container's auto_recovery in force


@lru_cache(maxsize=4096)
def layout(state: State, goals_timeout: float) -> Layout:
    """Group order, members and goal timers of `state` (a group without timeout: the default)."""
    index = {g.name: i for i, g in enumerate(state.groups)}
    members: list[list[str]] = [[] for _ in state.groups]
    group_of: dict[str, int] = {}
    for c in state.containers:
        gi = index.get(c.group, len(state.groups) - 1)
        members[gi].append(c.name)
        group_of[c.name] = gi
    names = tuple(g.name for g in state.groups)
    timeouts = [float(g.timeout) if g.timeout is not None else goals_timeout for g in state.groups]
    return Layout(
        names,
        tuple(tuple(m) for m in members),
        group_of,
        tuple(ArmTimer("goal:" + n, t) for n, t in zip(names, timeouts, strict=True)),
        tuple(CancelTimer("goal:" + n) for n in names),
        {c.name: _recovery_of(state, c) for c in state.containers},
    )


class Containers:
    """Container records and group progress of one running revision."""

    __slots__ = ("rev", "state", "recs", "layout", "group_status")

    def __init__(self, rev: str, state: State, goals_timeout: float):
        self.rev = rev
        self.state = state
        self.layout = lay = layout(state, goals_timeout)
        self.recs: dict[str, _Rec] = {
            c.name: _Rec(c, lay.group_of[c.name]) for c in state.containers
        }
        self.group_status = [_BLOCKED] * len(lay.group_names)

    def copy(self) -> Containers:
        """An independent copy (the spec, state and layout are immutable and shared)."""
        new = Containers.__new__(Containers)
        new.rev, new.state, new.layout = self.rev, self.state, self.layout
        new.recs = {name: rec.copy() for name, rec in self.recs.items()}
        new.group_status = list(self.group_status)
        return new

    def fingerprint(self) -> tuple:
        """Every field, as a hashable value (see Updater.fingerprint); the layout follows from the
        state and the engine's config."""
        return (
            self.rev,
            self.state,
            tuple((name, rec.fingerprint()) for name, rec in self.recs.items()),
            tuple(self.group_status),
        )

    @property
    def group_names(self) -> tuple[str, ...]:
        return self.layout.group_names

    # ------------------------------------------------------------------ starting

    def start_eligible(self) -> list[Command]:
        """Start every group whose predecessors are all ACHIEVED or TIMEDOUT."""
        out: list[Command] = []
        lay, recs = self.layout, self.recs
        for gi, status in enumerate(self.group_status):
            if status == _BLOCKED:
                names = tuple(n for n in lay.group_members[gi] if not recs[n].achieved)
                if names:
                    out.append(StartContainers(self.rev, names))
                    out.append(lay.goal_timers[gi])
                    for n in names:
                        self.recs[n].status = CStatus.STARTING
                    self.group_status[gi] = _STARTED
                else:
                    self.group_status[gi] = _ACHIEVED
                    continue
            if self.group_status[gi] == _STARTED:
                break
        return out

    def merged(
        self, rev: str, state: State, affected: frozenset[str], goals_timeout: float
    ) -> Containers:
        """The records after a non-reboot transition: untouched containers keep their status."""
        new = Containers(rev, state, goals_timeout)
        for name, rec in new.recs.items():
            old = self.recs.get(name)
            if old is not None and name not in affected:
                rec.status, rec.retries, rec.stable = old.status, old.retries, old.stable
        return new

    # ------------------------------------------------------------------ events

    def on_status(self, name: str, status: CStatus) -> tuple[list[Command], str | None]:
        rec = self.recs.get(name)
        if rec is None or rec.given_up:
            return [], None
        if status is CStatus.READY and rec.goal is not CStatus.READY:
            return [], None  # the ready signal is refused when the goal is not READY
        if status <= rec.status and rec.status <= CStatus.READY:
            return [], None
        was = rec.achieved
        rec.status = status
        out: list[Command] = []
        if rec.achieved and not was:
            ar = self.recovery_of(rec)
            if ar is not None and ar.stable_timeout > 0 and not rec.stable:
                out.append(ArmTimer("stable:" + name, ar.stable_timeout))
            out.extend(self._group_progress(rec.group))
        return out, (Verdict.ACHIEVED if self.all_achieved() else None)

    def on_exit(
        self, name: str, uptime: float, in_update: bool
    ) -> tuple[list[Command], str | None]:
        rec = self.recs.get(name)
        if rec is None or rec.given_up or rec.status in (CStatus.STOPPED, CStatus.RECOVERING):
            return [], None
        if rec.status is CStatus.STOPPING:  # stopped on purpose (a non-reboot transition)
            rec.status = CStatus.STOPPED
            return [], None
        rec.status = CStatus.STOPPED
        out: list[Command] = []
        if rec.stable is False:
            out.append(CancelTimer("stable:" + name))
        rec.stable = False
        ar = self.recovery_of(rec)
        if ar is None or ar.policy not in RECOVERING_POLICIES:
            return out, Verdict.FAILED
        if ar.reset_window > 0 and uptime > ar.reset_window:
            rec.retries = 0
        if ar.max_retries > 0 and rec.retries >= ar.max_retries:
            if in_update or ar.backoff_policy == "reboot":
                return out, Verdict.FAILED
            if ar.backoff_policy == "never":
                rec.given_up = True
                return out, None
            wait = parse_duration(ar.backoff_policy)
            if wait is None:
                return out, Verdict.FAILED
            rec.status = CStatus.RECOVERING
            out.append(ArmTimer("backoff:" + name, wait))
            return out, None
        rec.retries += 1
        delay = retry_delay(ar, rec.retries)
        if delay <= 0:
            rec.status = CStatus.STARTING
            out.append(StartContainers(self.rev, (name,)))
        else:
            rec.status = CStatus.RECOVERING
            out.append(ArmTimer("recovery:" + name, delay))
        return out, None

    def on_timer(self, name: str) -> tuple[list[Command], str | None]:
        kind, _, target = name.partition(":")
        if kind == "goal":
            if target not in self.group_names:
                return [], None
            gi = self.group_names.index(target)
            if self.group_status[gi] != _STARTED:
                return [], None
            self.group_status[gi] = _TIMEDOUT
            return self.start_eligible(), Verdict.TIMEDOUT
        rec = self.recs.get(target)
        if rec is None:
            return [], None
        if kind == "stable":
            if rec.achieved:
                rec.stable = True
            return [], (Verdict.STABLE if self.all_stable() else None)
        if kind in ("recovery", "backoff") and rec.status is CStatus.RECOVERING:
            if kind == "backoff":
                rec.retries = 0
            rec.status = CStatus.STARTING
            return [StartContainers(self.rev, (target,))], None
        return [], None

    def recovery_of(self, rec: _Rec) -> AutoRecovery | None:
        """The auto_recovery in force (`pv_state_start_platform`): a container whose own policy is
        "no" (or absent) takes its group's whole auto_recovery when the group has a policy."""
        return self.layout.recovery[rec.spec.name]

    def mark_stopping(self, names: tuple[str, ...]) -> None:
        """Containers the engine is stopping: their exit is expected, not a failure."""
        for name in names:
            rec = self.recs.get(name)
            if rec is not None:
                rec.status = CStatus.STOPPING

    # ------------------------------------------------------------------ queries

    def _group_progress(self, gi: int) -> list[Command]:
        if self.group_status[gi] != _STARTED:
            return []
        if all(self.recs[n].achieved for n in self.layout.group_members[gi]):
            self.group_status[gi] = _ACHIEVED
            return [self.layout.goal_cancels[gi], *self.start_eligible()]
        return []

    def all_achieved(self) -> bool:
        return all(s == _ACHIEVED for s in self.group_status)

    def any_timedout(self) -> bool:
        return _TIMEDOUT in self.group_status

    def all_stable(self) -> bool:
        for rec in self.recs.values():
            ar = self.recovery_of(rec)
            if ar is not None and ar.stable_timeout > 0 and not rec.stable and not rec.given_up:
                return False
        return True

    def running(self) -> tuple[str, ...]:
        """Containers that are up or being started (what a transition has to stop)."""
        return tuple(
            n for n, r in self.recs.items() if CStatus.MOUNTED <= r.status <= CStatus.RECOVERING
        )
