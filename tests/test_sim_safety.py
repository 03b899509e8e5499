"""The hardened engine never bricks a device under a power-cut storm; image updaters without a
rollback path, and the engine's faithful (unhardened) write ordering, can."""

from __future__ import annotations

from pathlib import Path

from pvsim.runner import run_scenario
from pvsim.scenario import load_scenario, with_overrides

STORM = Path(__file__).resolve().parent.parent / "scenarios" / "power-cut-storm.toml"
SMALL = {"fleet.devices": 150, "run.until_s": 86400.0}


def storm(**overrides):
    scenario = load_scenario(STORM, **SMALL)
    return run_scenario(with_overrides(scenario, **overrides)).results


def test_hardened_engine_never_bricks_under_the_storm():
    for seed in (7, 8):
        r = storm(**{"fleet.seed": seed, "update_model.hardened": True})
        assert r["power_cuts"] > 50
        assert r["faults"]["first_boot_power_cuts"] > 0
        assert r["bricked"] == 0
        assert r["faults"].get("torn_env_writes", 0) == 0
        # every device ends on a revision that boots: the old one or the new one
        assert sum(r["final_revision_counts"].values()) == 150


def test_faithful_ordering_single_env_copy_can_be_torn():
    # env writes take seconds here so a storm lands inside them often enough for a small fleet
    r = storm(
        **{
            "update_model.hardened": False,
            "faults.power_cuts_per_device_day": 2000,
            "device.env_write_s": 20,
        }
    )
    assert r["faults"]["torn_env_writes"] > 0
    assert r["bricked"] == r["faults"]["torn_env_writes"]


def test_ab_image_without_rollback_bricks_under_the_storm():
    common = {"update_model.kind": "ab-image", "faults.power_cuts_per_device_day": 2000, "device.env_write_s": 20}
    naive = storm(**{**common, "update_model.rollback": False})
    guarded = storm(**{**common, "update_model.rollback": True})
    assert naive["bricked"] > 0 and naive["faults"]["torn_env_writes"] == naive["bricked"]
    assert guarded["bricked"] == 0
