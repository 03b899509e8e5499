"""The pantavisor model's containers: each started container plays the script of
`shared.engine.driver.container_events` (rule D3) in modelled time.

A container's init runs `container_start_s` after the start; it signals ready (goal READY) or, with
a release defect that hits it, exits (`container_crash`) `ready_s` later, or never signals ready.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pvsim.device import DeviceRun
from pvsim.pantavisor.agenda import DeviceBrain
from shared.engine import commands as C
from shared.engine import events as E
from shared.engine.driver import StartOutcome, container_events

if TYPE_CHECKING:
    from pvsim.revisions import Revision
    from pvsim.world import World
    from shared.state import State

APP_DEFECTS = ("container_crash", "never_ready", "breaks_network")


@lru_cache(maxsize=1024)
def goals(state: State) -> dict[str, str]:
    """Status goal of each container of a revision (States are shared flyweights)."""
    return {c.name: str(c.status_goal) for c in state.containers}


class Containers:
    """Part of PantavisorModel: the attributes it uses are set by PantavisorModel.__init__."""

    world: World
    event: Any  # the model's event cache

    if TYPE_CHECKING:

        def _defect(self, device: int, rev: str) -> str: ...

    def _start_containers(self, run: DeviceRun, brain: DeviceBrain, command: C.StartContainers, t: float) -> None:
        world = self.world
        rng = world.rng
        cfg = world.device_cfg
        rev = command.rev
        defect = self._defect(run.device, rev)
        hit = self._defect_targets(world.revisions[int(rev)]) if defect in APP_DEFECTS else ()
        if hit or defect == "breaks_network":
            run.exposed = True
        trail = brain.disk.trails.get(rev)
        goal_of = goals(trail.state) if trail is not None and trail.state is not None else {}
        for name in command.names:
            goal = goal_of.get(name)
            if goal is None:
                outcome = StartOutcome.FAILS
            elif name in hit and defect == "container_crash":
                outcome = StartOutcome.CRASHES
            elif name in hit and defect == "never_ready":
                outcome = StartOutcome.NEVER_READY
            else:
                outcome = StartOutcome.OK
            started = t
            for kind in container_events(goal or "", outcome):
                if kind is E.ContainerStarted:
                    started = t + cfg.container_start_s.sample(rng)
                    brain.push(started, self.event(kind, name))
                elif kind is E.ContainerExited:
                    if outcome is StartOutcome.FAILS:
                        brain.push(t, E.ContainerExited(name, 0.0, -1))
                        continue
                    world.count("container_crash")
                    uptime = cfg.ready_s.sample(rng)
                    brain.push(started + uptime, E.ContainerExited(name, uptime, 1))
                elif kind is E.ContainerReady:
                    brain.push(started + cfg.ready_s.sample(rng), self.event(kind, name))
                else:  # mounted only
                    brain.push(t, self.event(kind, name))
            if outcome is StartOutcome.NEVER_READY and goal == "READY":
                world.count("never_ready")
        if defect == "breaks_network":
            world.count("breaks_network")

    @staticmethod
    def _defect_targets(revision: Revision) -> tuple[str, ...]:
        apps = [p[4:] for p in revision.release.parts if p.startswith("app:")]
        if apps:
            return tuple(apps)
        return tuple(c.name for c in revision.state.containers if c.group == "app")
