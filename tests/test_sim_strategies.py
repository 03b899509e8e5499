"""Rollout strategies decide; these tests check the decisions and that the hub obeys them."""

from __future__ import annotations

from pvsim.scenario import Rollout
from pvsim.testing import run
from shared.rollout import (
    ABORTED,
    PAUSED,
    RUNNING,
    Canary,
    Exponential,
    Groups,
    MaintenanceWindow,
    MaxUnavailable,
    Tally,
)


def test_groups_advance_on_success_and_pause_on_errors():
    cfg = Rollout(strategy="groups", group_percent=(10, 50, 100), success_threshold=0.5, error_threshold=0.5)
    s = Groups(cfg, 100)
    tally = Tally(100)
    n, _ = s.admit(0, tally)
    assert n == 10
    tally.admitted = 10
    tally.succeeded = 4
    assert s.admit(1, tally)[0] == 0  # 4 of 10 is below the 50 % success threshold
    tally.succeeded = 5
    n, _ = s.admit(2, tally)
    assert n == 40  # the second group takes the fleet to 50 %
    tally.admitted = 50
    tally.failed = 19
    assert s.admit(3, tally)[0] == 0 and s.state == RUNNING  # 19 < 50 % of 40
    tally.failed = 25
    assert s.admit(4, tally) == (0, None)
    assert s.state == PAUSED and s.halted_at == 4
    tally.succeeded = 50
    assert s.admit(5, tally)[0] == 0  # a paused rollout admits nobody, whatever happens next


def test_exponential_rate_grows_and_aborts_only_after_min_sample():
    cfg = Rollout(strategy="exponential", base_rate_per_min=10, increment_factor=2.0, abort_threshold=0.1, min_executed=50)
    s = Exponential(cfg, 10_000)
    tally = Tally(10_000)
    n, wake = s.admit(0, tally)
    assert (n, wake) == (10, 60.0)
    tally.admitted = 10
    assert s.admit(30, tally) == (0, 60.0)  # not before the next minute
    n, wake = s.admit(60, tally)
    assert n == 20 and wake == 120.0
    tally.admitted = 30
    tally.failed = 20  # 100 % failures, but only 20 executed: below the minimum sample
    assert s.admit(70, tally)[0] == 0 and s.state == RUNNING
    tally.succeeded = 29
    tally.failed = 21  # 50 executed, 42 % failed > 10 %
    assert s.admit(71, tally) == (0, None)
    assert s.state == ABORTED


def test_exponential_does_not_abort_below_threshold():
    cfg = Rollout(strategy="exponential", abort_threshold=0.5, min_executed=10)
    s = Exponential(cfg, 1000)
    tally = Tally(1000, admitted=100, succeeded=60, failed=40)
    s.admit(0, tally)
    assert s.state == RUNNING


def test_canary_soaks_then_opens_and_pauses_on_canary_failures():
    cfg = Rollout(strategy="canary", canary_devices=5, soak_s=100, canary_max_failures=0)
    s = Canary(cfg, 50)
    tally = Tally(50)
    assert s.admit(0, tally)[0] == 5
    tally.admitted, tally.succeeded = 5, 5
    assert s.admit(10, tally) == (0, 110)
    assert s.admit(110, tally)[0] == 45
    bad = Canary(cfg, 50)
    tally = Tally(50)
    bad.admit(0, tally)
    tally.admitted, tally.succeeded, tally.failed = 5, 4, 1
    assert bad.admit(10, tally) == (0, None) and bad.state == PAUSED


def test_max_unavailable_caps_devices_in_flight():
    s = MaxUnavailable(Rollout(strategy="max-unavailable", max_unavailable=0.25), 100)
    tally = Tally(100)
    assert s.admit(0, tally)[0] == 25
    tally.admitted = 25
    tally.succeeded = 3
    assert s.admit(1, tally)[0] == 3  # three slots freed
    s2 = MaxUnavailable(Rollout(strategy="max-unavailable", max_unavailable=4, max_failure_ratio=0.2), 100)
    tally = Tally(100, admitted=10, succeeded=4, failed=2)
    assert s2.admit(0, tally) == (0, None) and s2.state == PAUSED


def test_maintenance_window_delays_to_local_night():
    cfg = Rollout(strategy="maintenance-window", window_start_h=2, window_length_h=4, timezones_h=(0, 0))
    s = MaintenanceWindow(cfg, 10)
    assert s.start_delay(0, 3 * 3600) == 0  # 03:00 local is inside 02:00-06:00
    assert s.start_delay(0, 12 * 3600) == 14 * 3600  # noon waits until 02:00
    shifted = MaintenanceWindow(Rollout(strategy="maintenance-window", timezones_h=(5, 5)), 10)
    assert shifted.start_delay(0, 21 * 3600) == 0  # 21:00 UTC is 02:00 at UTC+5


def test_a_pause_really_stops_new_installs():
    result = run(
        **{
            "fleet.devices": 300,
            "release": [{"name": "bad", "parts": ["app:web"], "defect": "container_crash"}],
            "rollout.strategy": "groups",
            "rollout.group_percent": [5, 50, 100],
        }
    )
    release = result.releases[0]
    assert release["state"] == "paused"
    assert release["admitted"] == 15  # never got past the first group
    assert release["committed"] + release["rolled_back"] <= 15
    assert result.results["final_revision_counts"]["bad"] == 0
    assert result.results["final_revision_counts"]["0"] == 300


def test_aws_abort_waits_for_min_executed_in_a_fleet():
    result = run(
        **{
            "fleet.devices": 400,
            "release": [{"name": "bad", "parts": ["app:web"], "defect": "container_crash", "defect_fraction": 0.5}],
            "rollout.strategy": "exponential",
            "rollout.base_rate_per_min": 5,
            "rollout.increment_factor": 1.5,
            "rollout.abort_threshold": 0.1,
            "rollout.min_executed": 30,
        }
    )
    release = result.releases[0]
    assert result.results["rollout_state"] == "aborted"
    assert release["succeeded_reports"] + release["failed_reports"] >= 30
    assert release["admitted"] < 400


def test_maintenance_window_in_a_fleet_nobody_starts_outside_the_window():
    result = run(
        **{
            "fleet.devices": 60,
            "rollout.strategy": "maintenance-window",
            "rollout.window_start_h": 2,
            "rollout.window_length_h": 1,
            "rollout.timezones_h": [0, 0],
            "run.until_s": 4 * 3600,
        }
    )
    assert result.releases[0]["committed"] == 60
    t50 = result.results["time_to_50pct_s"]
    assert t50 is not None and t50 >= 2 * 3600
