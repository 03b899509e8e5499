"""Every fault the scenario can configure actually fires, is counted, and changes outcomes."""

from __future__ import annotations

import pytest

from pvsim.testing import run

BSP = [{"name": "r1", "parts": ["bsp"], "size_mb": 20}]


def test_no_faults_configured_means_none_fire_and_all_commit():
    result = run()
    r = result.results
    assert r["committed"] == 120 and r["rolled_back"] == 0 and r["bricked"] == 0
    assert all(v == 0 for v in r["faults"].values())
    assert r["final_revision_counts"] == {"0": 0, "r1": 120}


@pytest.mark.parametrize("model", ["pantavisor", "ab-image"])
def test_power_cuts_fire_and_interrupt_updates(model):
    result = run(**{"faults.power_cuts_per_device_day": 400, "release": BSP, "update_model.kind": model})
    r = result.results
    assert r["power_cuts"] > 20
    assert r["faults"]["power_cuts"] == r["power_cuts"]
    # interrupted try-boots roll back; nothing is bricked with rollback on
    assert r["rolled_back"] > 0
    assert r["bricked"] == 0


def test_first_boot_power_cut_rolls_back_the_try():
    result = run(**{"faults.first_boot_power_cut_probability": 1.0, "release": BSP})
    r = result.results
    assert r["faults"]["first_boot_power_cuts"] == 120
    assert r["rolled_back"] == 120
    assert r["final_revision_counts"]["0"] == 120


def test_storage_write_errors_fire():
    result = run(**{"faults.storage_write_error_probability": 0.2})
    assert result.results["faults"]["storage_write_errors"] > 10
    assert result.results["bricked"] == 0


def test_full_disks_make_wontgo():
    result = run(**{"faults.disk_full_fraction": 0.5})
    r = result.results
    assert r["faults"]["disk_full"] == r["faults"]["disk_full_devices"] > 30
    assert result.extras["wontgo"] == r["faults"]["disk_full"]
    assert r["committed"] == 120 - r["faults"]["disk_full"]


def test_network_loss_fires_and_costs_bytes():
    clean = run().results["bytes_downloaded"]
    lossy = run(**{"faults.network_loss_probability": 0.5}).results
    assert lossy["faults"]["network_losses"] > 30
    assert lossy["bytes_downloaded"] > clean


def test_network_outages_fire():
    result = run(**{"faults.network_outages_per_device_day": 200, "faults.network_outage_s": 120})
    faults = result.results["faults"]
    assert faults.get("network_outage_hits", 0) + faults.get("transfers_cut_by_outage", 0) > 0


def test_slow_links_slow_the_rollout():
    fast = run(**{"fleet.devices": 80})
    slow = run(**{"fleet.devices": 80, "faults.slow_link_fraction": 1.0, "faults.slow_link_factor": 50})
    assert slow.results["faults"]["slow_link_devices"] == 80
    assert slow.results["time_to_95pct_s"] > fast.results["time_to_95pct_s"]


def test_hub_outages_fire_and_delay():
    base = run().results
    down = run(**{"faults.hub_outages": [{"at_s": 0, "duration_s": 1800}]}).results
    assert down["faults"]["hub_outages"] == 1
    assert down["faults"]["hub_outage_hits"] > 0
    assert down["time_to_50pct_s"] > base["time_to_50pct_s"] + 1500


def test_hub_flapping_during_testing_rolls_back():
    # 8 s down every 20 s for two hours; small objects so downloads fit between the flaps
    flaps = [{"at_s": 30 + 20 * k, "duration_s": 8} for k in range(350)]
    result = run(**{"faults.hub_outages": flaps, "release": [{"name": "r1", "parts": ["app:web"], "size_mb": 0.5}]})
    r = result.results
    assert r["faults"]["hub_outages"] == 350
    assert r["faults"]["hub_outage_hits"] > 0
    assert r["rolled_back"] > 60  # "Hub communication not stable" during TESTING


@pytest.mark.parametrize(
    ("defect", "parts", "fault", "outcome"),
    [
        ("corrupt_object", ["app:web"], "corrupt_object", "wontgo"),
        ("bad_signature", ["app:web"], "bad_signature", "wontgo"),
        ("kernel_panic", ["bsp"], "kernel_panic", "rolled_back"),
        ("container_crash", ["app:web"], "container_crash", "rolled_back"),
        ("never_ready", ["app:web"], "never_ready", "rolled_back"),
        ("breaks_network", ["app:web"], "breaks_network", "rolled_back"),
    ],
)
def test_each_release_defect_fires_on_its_fraction(defect, parts, fault, outcome):
    release = [{"name": "r1", "parts": parts, "defect": defect, "defect_fraction": 0.5}]
    result = run(**{"release": release, "run.until_s": 14400})
    r, x = result.results, result.extras
    assert r["faults"][fault] > 0
    failed = x["wontgo"] if outcome == "wontgo" else r[outcome]
    assert 35 <= failed <= 85, failed  # about half of 120, never everyone
    assert r["committed"] == 120 - failed
    assert r["bricked"] == 0


@pytest.mark.parametrize("defect", ["kernel_panic", "never_ready", "breaks_network"])
def test_ab_image_without_rollback_bricks_defective_devices(defect):
    parts = ["bsp"] if defect == "kernel_panic" else ["app:web"]
    release = [{"name": "r1", "parts": parts, "defect": defect, "defect_fraction": 0.5}]
    kw = {"release": release, "update_model.kind": "ab-image", "update_model.rollback": False}
    bricked = run(**kw).results
    safe = run(**{**kw, "update_model.rollback": True}).results
    assert bricked["bricked"] > 30 and bricked["rolled_back"] == 0
    assert safe["bricked"] == 0 and safe["rolled_back"] == bricked["bricked"]


def test_ab_delta_moves_fewer_bytes_than_ab_image_and_pantavisor_fewer_still():
    image = run(**{"update_model.kind": "ab-image"}).results["bytes_downloaded"]
    delta = run(**{"update_model.kind": "ab-delta"}).results["bytes_downloaded"]
    objects = run(**{"update_model.kind": "pantavisor"}).results["bytes_downloaded"]
    assert objects < delta < image
    assert image == 120 * 400 * 1_000_000
    # default delta ratio is uniform(0.1, 0.7) of the image (peers-and-rollouts.md §2.8)
    assert 0.1 * image <= delta <= 0.7 * image


def test_major_release_delta_is_worse_than_the_full_image():
    release = [{"name": "r1", "parts": ["bsp"], "major": True}]
    image = run(**{"update_model.kind": "ab-image", "release": release}).results["bytes_downloaded"]
    delta = run(**{"update_model.kind": "ab-delta", "release": release}).results["bytes_downloaded"]
    assert delta > image


def test_hub_egress_is_released_when_updates_end():
    """Transfers still listed when an update ends (WONTGO mid-download) must free their share."""
    from pvsim.runner import model_factory
    from pvsim.testing import scenario
    from pvsim.world import World

    release = [{"name": "r1", "parts": ["bsp", "app:web"], "defect": "corrupt_object", "defect_fraction": 0.5}]
    world = World(scenario(**{"release": release, "faults.network_loss_probability": 0.3}), model_factory("pantavisor"))
    world.run()
    assert not world.active_runs
    assert world.fault_counts["corrupt_object"] > 0
    assert world.egress.active == 0


def test_engine_config_reaches_the_devices_counter_latch_survives_first_boot_cuts():
    kw = {"faults.first_boot_power_cut_probability": 0.4, "release": BSP}
    single = run(**kw).results
    counter = run(**kw, **{"update_model.engine": {"PVTWIN_BOOT_LATCH": "counter", "PVTWIN_BOOT_ATTEMPTS": 3}}).results
    assert single["rolled_back"] > 30
    assert counter["faults"]["first_boot_power_cuts"] > counter["rolled_back"]
    assert counter["rolled_back"] < single["rolled_back"] / 3
