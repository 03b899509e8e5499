"""shared/rollout/: the sans-IO rollout controller that pvsim's Hub and the real Hub both call."""

from __future__ import annotations

import json
import time

import pytest
from hubkit import device, hub_files, write_release

from pvreal.hub.api import TICK_S
from pvreal.hub.client import operator_for, publish
from pvreal.hub.server import running
from pvsim.hub import make_strategy
from pvsim.scenario import STRATEGIES
from pvsim.scenario import Rollout as ScenarioRollout
from shared import rollout
from shared.rollout import (
    ABORTED,
    COMPLETED,
    PAUSED,
    RUNNING,
    AllAtOnce,
    Groups,
    RolloutConfig,
    RolloutError,
    Tally,
    decide,
    make_controller,
    parse_options,
)
from shared.rollout.silent import SilentDevices


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_both_hubs_share_one_registry_and_the_same_defaults(strategy):
    cls = rollout.REGISTRY[strategy]
    scenario = ScenarioRollout(strategy=strategy)
    for name, option in cls.options.items():
        assert option.default == getattr(scenario, name), name
    built = make_strategy(scenario, 50)
    assert type(built) is cls
    assert built.snapshot() == make_controller(RolloutConfig(strategy), 50).snapshot()


def test_list_and_optional_options_parse_from_text_and_json():
    assert parse_options("groups", {"group_percent": "10,50,100"}) == {"group_percent": (10.0, 50.0, 100.0)}
    assert parse_options("groups", {"group_percent": [10, 100]}) == {"group_percent": (10.0, 100.0)}
    assert parse_options("maintenance-window", {"timezones_h": "-5,2"}) == {"timezones_h": (-5.0, 2.0)}
    assert parse_options("max-unavailable", {"max_failure_ratio": "none"}) == {"max_failure_ratio": None}
    assert parse_options("canary", {"canary_devices": "3", "soak_s": "60"}) == {"canary_devices": 3, "soak_s": 60.0}
    for strategy, raw, message in [
        ("groups", {"group_percent": "10,50"}, "last group must reach 100"),
        ("groups", {"group_percent": "50,10,100"}, "increasing"),
        ("groups", {"group_percent": 5}, "list of numbers"),
        ("groups", {"error_threshold": "2"}, "between 0 and 1"),
        ("canary", {"canary_devices": "1.5"}, "integer"),
        ("canary", {"canary_devices": 1.5}, "integer"),
        ("canary", {"soak_s": True}, "number"),
        ("maintenance-window", {"timezones_h": "3,-5"}, "westmost, eastmost"),
        ("exponential", {"increment_factor": "1"}, "above 1"),
        ("all-at-once", {"device_timeout_s": "-1"}, "at least 0"),
    ]:
        with pytest.raises(RolloutError, match=message):
            parse_options(strategy, raw)


def test_a_controller_survives_a_json_round_trip_of_its_snapshot():
    options = parse_options("groups", {"group_percent": "50,100"})
    cfg = RolloutConfig("groups", json.loads(json.dumps(options)))  # as the real Hub stores them
    c = make_controller(cfg, 4)
    assert isinstance(c, Groups) and decide(c, 0.0, Tally(4)).admit == 2
    again = make_controller(cfg, 4)
    again.restore(json.loads(json.dumps(c.snapshot())))
    assert decide(again, 1.0, Tally(4, admitted=2, succeeded=1)).admit == 2


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_groups_run_on_the_real_hub_and_pause_on_a_failing_group(tmp_path):
    files = hub_files(tmp_path)
    with running(files, clock=Clock()) as url:
        devices = [device(url, files, f"d{i}") for i in range(4)]
        state, objects = write_release(tmp_path / "r", "v1")
        op = operator_for(files.database)
        options = parse_options("groups", {"group_percent": "25,50,100", "error_threshold": "0.5"})
        rel = publish(op, state, "web-1.1", "groups", options, objects)
        assert (rel["admitted"], rel["fleet"], rel["state"]) == (1, 4, RUNNING)

        def offered():
            return [d for d in devices if d.steps() or d.steps("ALL")]

        [first] = offered()
        first.put_progress(1, {"status": "DONE", "status-msg": "", "progress": 100})
        assert op.status()["releases"][0]["admitted"] == 2  # the first group succeeded: the next opens
        [second] = [d for d in offered() if d is not first]
        second.put_progress(1, {"status": "ERROR", "status-msg": "broken", "progress": 100})
        release = op.status()["releases"][0]
        assert (release["state"], release["admitted"]) == (PAUSED, 2)  # its group failed
        assert len(offered()) == 2


def test_all_at_once_admits_the_whole_fleet_then_completes_when_everyone_answered():
    c = make_controller(RolloutConfig(), fleet=4)
    first = decide(c, 0.0, Tally(4))
    assert (first.admit, first.state, first.wake_at) == (4, RUNNING, None)
    assert decide(c, 1.0, Tally(4, admitted=4, succeeded=3)).state == RUNNING
    done = decide(c, 2.0, Tally(4, admitted=4, succeeded=3, failed=1))
    assert (done.admit, done.state) == (0, COMPLETED)


def test_operator_pause_resume_abort():
    c = make_controller(RolloutConfig(), fleet=3)
    c.pause(5.0)
    assert (c.state, c.halted_at) == (PAUSED, 5.0)
    assert decide(c, 6.0, Tally(3)) == rollout.Decision(0, PAUSED, None)
    c.resume(7.0)
    assert decide(c, 7.0, Tally(3)).admit == 3
    c.abort(8.0)
    assert decide(c, 9.0, Tally(3, admitted=3)).state == ABORTED
    c.resume(10.0)  # an aborted rollout stays aborted
    assert c.state == ABORTED


def test_a_decision_never_admits_more_than_the_fleet_nor_a_negative_count():
    class Greedy(AllAtOnce):
        def admit(self, now, tally):
            return 99, 3.0

    assert decide(Greedy(RolloutConfig(), 2), 0.0, Tally(2, admitted=1)).admit == 1

    class Negative(AllAtOnce):
        def admit(self, now, tally):
            return -5, None

    assert decide(Negative(RolloutConfig(), 2), 0.0, Tally(2)).admit == 0


def test_snapshot_and_restore_carry_the_state_across_a_hub_restart():
    c = make_controller(RolloutConfig(), fleet=3)
    c.pause(4.0)
    again = make_controller(RolloutConfig(), fleet=3)
    again.restore(c.snapshot())
    assert (again.state, again.halted_at) == (PAUSED, 4.0)
    assert "cfg" not in c.snapshot() and "fleet" not in c.snapshot()


def test_options_are_checked_against_the_strategy():
    assert parse_options("all-at-once", {}) == {}
    with pytest.raises(RolloutError, match="unknown strategy 'nope'"):
        parse_options("nope", {})
    with pytest.raises(RolloutError, match="has no option 'soak_s'"):
        parse_options("all-at-once", {"soak_s": "60"})
    assert parse_options("all-at-once", {"device_timeout_s": "60"}) == {"device_timeout_s": 60.0}
    with pytest.raises(RolloutError, match="unknown strategy"):
        make_controller(RolloutConfig("nope"), 1)


def test_config_options_read_as_attributes_like_pvsims_scenario_model():
    cfg = RolloutConfig("all-at-once", {"soak_s": 60.0})
    assert cfg.soak_s == 60.0
    with pytest.raises(AttributeError):
        _ = cfg.canary_devices


def test_the_silent_device_rule_counts_each_silent_device_failed_once():
    assert not SilentDevices(0.0).enabled
    books = SilentDevices(100.0)
    books.took(1, 0.0)
    books.took(2, 10.0)
    books.took(3, 20.0)
    assert books.next_deadline() == 100.0
    assert books.reported(2)  # in time: counted by its report
    assert books.expire(99.0) == [] and books.next_deadline() == 100.0
    assert books.expire(100.0) == [1]
    assert books.next_deadline() == 120.0  # 2's deadline dropped: it reported
    assert books.expire(500.0) == [3] and books.next_deadline() is None
    assert books.timed_out == [1, 3]
    assert not books.reported(3)  # too late: the Hub ignores the report
    assert books.expire(900.0) == []


def test_the_silent_device_books_hold_only_the_devices_in_flight():
    """Reports drop the settled deadlines at the front (a million-device run keeps no entry per
    device for a timeout longer than the run), and the rule still counts the one that stays
    silent: a FIFO drops only at its front, so the entries behind it wait for its deadline."""
    books = SilentDevices(1000.0)
    for dev in range(10_000):
        books.took(dev, float(dev))
    books.took(0, 10_000.0)  # took the release again: its first deadline is stale
    for dev in range(5_000):
        assert books.reported(dev)
    assert books.held() == 5_001  # 5 000 .. 9 999, and device 0's second deadline
    for dev in range(5_001, 10_000):
        assert books.reported(dev)
    assert books.held() == 5_001 and books.next_deadline() == 6000.0  # behind device 5 000's
    assert books.expire(5999.0) == [] and books.expire(6000.0) == [5_000]
    assert books.held() == 0 and books.next_deadline() is None and books.timed_out == [5_000]
    assert not books.reported(5_000)  # too late: the Hub ignores the report


def test_the_real_hub_counts_a_silent_device_failed_on_its_own_timer(tmp_path):
    """Time passing alone (the Hub's ticker, no request) counts a device that took the release and
    stayed silent past device_timeout_s as failed, once; its late report changes nothing; a device
    that never polled has not taken the release and is not counted."""
    clock = Clock()
    files = hub_files(tmp_path)
    with running(files, clock=clock) as url:
        quick, silent, absent = (device(url, files, f"d{i}") for i in range(3))
        state, objects = write_release(tmp_path / "r", "v1")
        op = operator_for(files.database)
        options = parse_options("all-at-once", {"device_timeout_s": "60"})
        publish(op, state, "web-1.1", "all-at-once", options, objects)
        assert [len(d.steps()) for d in (quick, silent)] == [1, 1]  # both took it at t0
        quick.put_progress(1, {"status": "DONE", "status-msg": "", "progress": 100})

        def release():
            return op.status()["releases"][0]

        clock.now += 59
        time.sleep(3 * TICK_S)
        assert (release()["failed"], release()["timed_out"]) == (0, 0)  # not yet due
        clock.now += 1
        deadline = time.monotonic() + 10
        while release()["failed"] == 0 and time.monotonic() < deadline:
            time.sleep(TICK_S / 2)  # no request to the Hub moves it: only its timer
        rel = release()
        assert (rel["succeeded"], rel["failed"], rel["timed_out"], rel["state"]) == (1, 1, 1, RUNNING)
        silent.put_progress(1, {"status": "DONE", "status-msg": "", "progress": 100})
        rel = release()
        assert (rel["succeeded"], rel["failed"]) == (1, 1)  # too late: already counted failed
        absent.steps()  # takes it now: its own deadline starts now
        clock.now += 61
        deadline = time.monotonic() + 10
        while release()["state"] == RUNNING and time.monotonic() < deadline:
            time.sleep(TICK_S / 2)
        rel = release()
        assert (rel["failed"], rel["timed_out"], rel["state"]) == (2, 2, COMPLETED)
