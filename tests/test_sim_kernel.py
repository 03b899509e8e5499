"""The cheap paths the device-update runs on: plain SimPy calls, block-drawn normals, the Hub
reachability window and stale timers. Each is checked against the slow way it replaces."""

from __future__ import annotations

import random
import statistics
from typing import Any

from pvsim.device import DeviceRun
from pvsim.dists import SimRandom
from pvsim.kernel import CountingEnvironment
from pvsim.pantavisor import DeviceUpdate, PantavisorModel
from pvsim.testing import scenario
from pvsim.world import World
from shared.engine.commands import RunGc
from shared.engine.events import ContainerStarted, GcDone, TimerFired


def test_calls_run_in_time_order_with_timeouts_and_are_counted():
    env = CountingEnvironment()
    seen: list[tuple[float, str]] = []

    def proc():
        yield env.timeout(2.0)
        seen.append((env.now, "timeout"))

    env.process(proc())
    env.call_later(3.0, lambda _call: seen.append((env.now, "call at 3")))
    env.call_later(1.0, lambda _call: seen.append((env.now, "call at 1")))
    env.run(until=10)
    assert seen == [(1.0, "call at 1"), (2.0, "timeout"), (3.0, "call at 3")]
    # process start, its timeout, its end, two calls: the run's own stop event is not counted
    assert env.events == 5


def test_calls_keep_simpy_order_for_equal_times():
    env = CountingEnvironment()
    seen: list[str] = []

    def proc():
        yield env.timeout(1.0)
        seen.append("timeout")

    env.call_later(1.0, lambda _call: seen.append("first call"))
    env.process(proc())  # its Initialize runs at 0, so its timeout is scheduled after the call
    env.call_later(1.0, lambda _call: seen.append("second call"))
    env.run()
    assert seen == ["first call", "second call", "timeout"]


def test_sim_random_normals_are_standard_normal_and_reproducible():
    a, b = SimRandom(7), SimRandom(7)
    draws = [a.normalvariate(3.0, 2.0) for _ in range(3 * SimRandom.BLOCK + 5)]  # across blocks
    assert draws == [b.normalvariate(3.0, 2.0) for _ in range(len(draws))]
    assert abs(statistics.fmean(draws) - 3.0) < 0.1
    assert abs(statistics.stdev(draws) - 2.0) < 0.1
    assert draws != [SimRandom(8).normalvariate(3.0, 2.0) for _ in range(len(draws))]


def test_sim_random_reseeds_its_normals_too():
    # shards reseed the world's generator: their normal draws must differ, and follow the seed
    a, b = SimRandom(1), SimRandom(2)
    a.seed(5)
    b.seed(6)
    assert a.normalvariate() != b.normalvariate()
    b.seed(5)
    c = SimRandom(5)
    assert [b.normalvariate() for _ in range(3)] == [c.normalvariate() for _ in range(3)]


def test_sim_random_normals_leave_the_uniform_stream_alone():
    # fault draws (uniform, exponential) do not shift when a scenario's latencies change
    rng = SimRandom(3)
    rng.normalvariate()
    rng.lognormvariate(0.0, 1.0)
    plain = random.Random(3)
    assert [rng.random() for _ in range(5)] == [plain.random() for _ in range(5)]


# a release far past the times these tests look at: the world stays quiet
_QUIET = {"run.until_s": 100_000, "release": [{"name": "later", "at_s": 90_000, "parts": ["app:web"], "size_mb": 1}]}


def _reference_reachable(run: DeviceRun, now: float) -> bool:
    """Reachability from the outage intervals themselves, without the cached window."""
    starts, ends = run.world.hub_outages.starts, run.world.hub_outages.ends
    hub_down = any(s <= now < e for s, e in zip(starts, ends, strict=True))
    return not hub_down and not (run.net_start <= now < run.net_end)


def test_hub_reachability_window_agrees_with_the_intervals():
    sc = scenario(
        **{
            "faults.network_outages_per_device_day": 300,
            "faults.network_outage_s": 60,
            "faults.hub_outages_per_day": 200,
            "faults.hub_outage_s": 90,
            **_QUIET,
        }
    )
    world = World(sc, PantavisorModel)
    runs = [DeviceRun(world, device, None) for device in range(20)]  # type: ignore[arg-type]
    rng = random.Random(5)
    t = 0.0
    answers = set()
    for _ in range(3000):
        t += rng.expovariate(1 / 20.0)
        world.env.run(until=t)
        for run in runs:
            got = run.hub_reachable()
            assert got == _reference_reachable(run, t), (run.device, t)
            answers.add(got)
    assert answers == {True, False}  # both branches were exercised


def _sleeper(woken: list[float]) -> tuple[World, Any, DeviceUpdate]:
    """A factory device in a quiet world, its update noting when it wakes up (and doing no more)."""
    world = World(scenario(**_QUIET), PantavisorModel)
    model = world.model
    run = DeviceRun(world, 0, None)  # type: ignore[arg-type]
    brain = model._wake_factory(run)

    class Probe(DeviceUpdate):
        __slots__ = ()

        def _woke(self, call: object) -> None:
            if call is self.sleeping:
                woken.append(world.env.now)

    return world, brain, Probe(model, run, brain, "1", lambda outcome: None)


def test_a_cancelled_timer_wakes_nobody():
    woken: list[float] = []
    world, brain, update = _sleeper(woken)
    brain.timers.arm("goal:app", 99)
    # the entry of arming 98, since re-armed; then some event
    brain.agenda[:] = [(5.0, 98, TimerFired("goal:app")), (9.0, 100, ContainerStarted("app"))]
    update._rest()
    world.env.run(until=20)
    assert woken[0] == 9.0


def test_a_device_writing_is_woken_no_earlier_than_its_writes_land():
    """DeviceUpdate sleeps through a batch of writes: an entry a transfer adds meanwhile is
    taken when the writes land (as if the device had woken then), not when it is due."""
    woken: list[float] = []
    world, brain, update = _sleeper(woken)
    brain.agenda[:] = [(50.0, 1, ContainerStarted("app"))]
    update._doze(10.0)  # planned now, from the end of writes that land at 10
    brain.push(5.0, ContainerStarted("db"))
    update.nudge(5.0)  # due while the writes are under way
    brain.push(0.0, ContainerStarted("db"))
    world.egress.in_tick = True  # as when the egress delivers a transfer's end from its own event
    update.nudge(0.0)  # due now: an idle device would take it at once
    world.egress.in_tick = False
    assert woken == []
    world.env.run(until=60)
    assert woken == [10.0]  # and not at 0 or 5, nor at 50 (that wake-up went stale)


def test_a_gc_planned_with_its_batch_is_done_when_the_batch_lands():
    """A batch applied when it is planned (DeviceUpdate.drain) has its GC answered when it lands."""
    world = World(scenario(**_QUIET), PantavisorModel)
    model = world.model
    run = DeviceRun(world, 0, None)  # type: ignore[arg-type]
    brain = model._wake_factory(run)
    gc = RunGc(frozenset({"0"}), frozenset(), "space")
    model._apply_writes(run, brain, [(0.0, 0.25, gc)], 0.25)
    assert [(at, type(entry)) for at, _, entry in brain.agenda] == [(0.25, GcDone)]
    assert world.env.now == 0.0


def _busy_program(env, use_calls: bool, seen: list[tuple[float, int]]) -> None:
    """Items that fire, log themselves and schedule follow-ups (ties, zero delays, far delays),
    with the randomness drawn in firing order: two queues agree only if they fire alike."""
    rng = random.Random(11)

    def later(delay: float, label: int) -> None:
        def fire(_event: object) -> None:
            seen.append((env.now, label))
            if label < 3000:
                pick = rng.random()
                delay = 0.0 if pick < 0.2 else float(rng.randrange(4)) if pick < 0.6 else rng.uniform(0, 50)
                later(delay, label + 300)
                if pick > 0.97:
                    later(rng.uniform(1e3, 1e4), label + 1)

        if use_calls and label % 2:
            env.call_later(delay, fire)
        else:
            env.timeout(delay).callbacks.append(fire)

    for label in range(300):
        later(float(label % 7), label)


def test_calendar_queue_fires_in_simpy_order_across_chunked_runs():
    import simpy

    reference: list[tuple[float, int]] = []
    plain = simpy.Environment()
    _busy_program(plain, False, reference)
    plain.run(until=20_000)
    seen: list[tuple[float, int]] = []
    env = CountingEnvironment()
    _busy_program(env, True, seen)
    for until in (0.5, 3, 3.0000001, 7, 100, 2500, 20_000):  # stops on bucket edges and event times
        env.run(until=until)
        assert env.now == until
    assert seen == reference
    assert len(seen) > 3000
