"""shared/rollout.py: the sans-IO rollout controller the real Hub calls (and pvsim's Hub will)."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest

from pvsim import strategies
from shared import rollout
from shared.rollout import (
    ABORTED,
    COMPLETED,
    PAUSED,
    RUNNING,
    AllAtOnce,
    RolloutConfig,
    RolloutError,
    Tally,
    decide,
    make_controller,
    parse_options,
)


def test_the_interface_has_pvsims_shape_so_its_strategies_can_move_here():
    assert [f.name for f in fields(Tally)] == [f.name for f in fields(strategies.Tally)]
    for method in ("admit", "start_delay", "_halt", "_rest"):
        ours = inspect.signature(getattr(rollout.Controller, method))
        theirs = inspect.signature(getattr(strategies.Strategy, method))
        assert list(ours.parameters) == list(theirs.parameters), method
    assert (RUNNING, PAUSED, ABORTED, COMPLETED) == (
        strategies.RUNNING, strategies.PAUSED, strategies.ABORTED, strategies.COMPLETED)


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
    with pytest.raises(RolloutError, match="unknown strategy"):
        make_controller(RolloutConfig("nope"), 1)


def test_config_options_read_as_attributes_like_pvsims_scenario_model():
    cfg = RolloutConfig("all-at-once", {"soak_s": 60.0})
    assert cfg.soak_s == 60.0
    with pytest.raises(AttributeError):
        _ = cfg.canary_devices
