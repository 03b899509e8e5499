"""Every number results.json gives can be checked against another: bytes, per-release counts,
retries, the reasons for failures, and devices that went silent."""

from __future__ import annotations

import pytest

from pvsim.report import failure_rows, html_report, silent_rows
from pvsim.testing import run
from shared.engine.progress import Msg

BSP = [{"name": "r1", "parts": ["bsp"], "size_mb": 20}]
ENGINE_MESSAGES = {v for k, v in vars(Msg).items() if k.isupper()}


@pytest.mark.parametrize("model", ["pantavisor", "ab-image"])
def test_bytes_cut_by_power_still_count_and_are_wasted(model):
    clean = run(**{"release": BSP, "update_model.kind": model}).results
    cut = run(**{"faults.power_cuts_per_device_day": 400, "release": BSP, "update_model.kind": model}).results
    assert clean["bytes_wasted"] == 0
    assert cut["power_cuts"] > 20
    assert cut["bytes_wasted"] > 0
    # the bytes a cut threw away were moved, and the re-fetch moves them again
    assert cut["bytes_downloaded"] > clean["bytes_downloaded"]
    assert cut["bytes_wasted"] < cut["bytes_downloaded"]


@pytest.mark.parametrize("model", ["pantavisor", "ab-image"])
def test_a_run_ending_mid_download_counts_what_moved(model):
    slow = {"device.link_mbit_s": {"dist": "constant", "value": 1}, "run.until_s": 200, "update_model.kind": model}
    result = run(**slow, release=[{"name": "r1", "parts": ["app:web"], "size_mb": 100}])
    r = result.results
    assert r["committed"] == 0 and r["in_progress_at_end"] > 0
    assert r["bytes_downloaded"] > 0
    assert r["bytes_downloaded"] == pytest.approx(result.timeline["mb_moved"][-1] * 1e6, rel=1e-6)


def test_network_losses_are_counted_as_retries_and_waste():
    r = run(**{"faults.network_loss_probability": 0.5}).results
    assert r["retries"]["object"] == r["faults"]["network_losses"] > 30
    assert 0 < r["bytes_wasted"] < r["bytes_downloaded"]


def test_per_release_counts_add_up():
    result = run(**{"faults.power_cuts_per_device_day": 200, "faults.disk_full_fraction": 0.2, "release": BSP})
    r = result.results
    assert r["releases"] == result.releases
    (release,) = r["releases"]
    finished = release["committed"] + release["rolled_back"] + release["wontgo"] + release["bricked"]
    assert release["device_updates"] == finished + release["in_progress_at_end"] == r["device_updates"]
    assert release["stuck"] == release["wontgo"] + release["in_progress_at_end"] == r["stuck"]
    assert release["wontgo"] == r["wontgo"] > 0
    assert sum(release["wontgo_reasons"].values()) == release["wontgo"]
    assert sum(release["rolled_back_reasons"].values()) == release["rolled_back"] == r["rolled_back"] > 0
    assert release["mb_wasted"] * 1e6 == pytest.approx(r["bytes_wasted"], abs=1e3)


@pytest.mark.parametrize(
    ("defect", "faults"),
    [("never_ready", {}), ("kernel_panic", {}), ("none", {"faults.first_boot_power_cut_probability": 1.0})],
)
def test_rollback_reasons_are_the_engines_own_messages(defect, faults):
    release = [{"name": "r1", "parts": ["bsp", "app:web"], "size_mb": 20, "defect": defect}]
    result = run(release=release, **faults)
    r = result.results
    assert r["rolled_back"] > 0
    assert sum(r["rollback_reasons"].values()) == r["rolled_back"]
    assert set(r["rollback_reasons"]) <= ENGINE_MESSAGES
    if defect == "never_ready":
        assert r["rollback_reasons"] == {Msg.GOAL_NOT_REACHED: r["rolled_back"]}
    rows = failure_rows(result.releases)
    assert sum(row["device-updates"] for row in rows if row["outcome"] == "rolled_back") == r["rolled_back"]
    assert all(row["reason"] in html_report(result, {}, "t") for row in rows)


SILENT = {  # an image that breaks the network, committed without a health check: it never reports
    "update_model.kind": "ab-image",
    "update_model.health_check": False,
    "release": [{"name": "r1", "parts": ["bsp"], "size_mb": 20, "defect": "breaks_network"}],
    "run.until_s": 20000,
}


def test_silent_devices_time_out_so_the_rollout_ends():
    waiting = run(**SILENT, **{"rollout.device_timeout_s": 0}).results
    assert waiting["bricked"] == 120 and waiting["rollout_state"] == "running"
    result = run(**SILENT, **{"rollout.device_timeout_s": 3600})
    r = result.results
    assert r["rollout_state"] == "completed"
    assert r["timed_out"] == 120 and r["bricked"] == 120
    (release,) = result.releases
    assert release["timed_out_devices"] == sorted(release["timed_out_devices"])
    assert len(release["timed_out_devices"]) == 20
    (row,) = silent_rows(result.releases)
    assert row["devices"] == 120
    assert any("silent past 3600 s" in label for _, label in result.marks)


def test_silence_counts_against_the_thresholds():
    """A hawkBit-style group of silent devices is a failed group: the rollout pauses."""
    groups = {"rollout.strategy": "groups", "rollout.group_percent": [50, 100], "rollout.device_timeout_s": 1800}
    r = run(**SILENT, **groups).results
    assert r["timed_out"] == 60
    assert r["rollout_state"] == "paused"


def test_a_late_report_after_the_timeout_is_not_counted_twice():
    slow = {"device.link_mbit_s": {"dist": "constant", "value": 1}, "rollout.device_timeout_s": 120}
    result = run(**slow, release=[{"name": "r1", "parts": ["app:web"], "size_mb": 100}])
    r = result.results
    assert r["timed_out"] == 120 and r["committed"] == 120  # they did finish, after the Hub gave up
    (release,) = result.releases
    assert release["failed_reports"] == 120 and release["succeeded_reports"] == 0
