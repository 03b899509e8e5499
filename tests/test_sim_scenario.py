"""Scenario files: validation errors name the file and the dotted key; shipped files are valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvsim.dists import Dist, parse_dist
from pvsim.scenario import ScenarioError, load_scenario

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "scenarios").glob("*.toml"))
REQUIRED = {
    "quickstart",
    "power-cut-storm",
    "bad-kernel",
    "never-ready-app",
    "hub-flaps-during-testing",
    "first-boot-power-loss",
    "bandwidth-limited",
    "strategy-study",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.toml"
    path.write_text(text, encoding="utf-8")
    return path


RELEASE = '\n[[release]]\nname = "r1"\n'


def test_every_required_scenario_ships_and_validates():
    names = {p.stem for p in SHIPPED}
    assert names >= REQUIRED
    for path in SHIPPED:
        scenario = load_scenario(path)
        assert scenario.name == path.stem
        assert scenario.release


def test_quickstart_is_the_documented_demo():
    scenario = load_scenario(REPO / "scenarios" / "quickstart.toml")
    assert scenario.fleet.devices == 20000
    assert [r.defect for r in scenario.release] == ["none", "never_ready"]
    assert scenario.rollout.strategy == "groups"


@pytest.mark.parametrize(
    ("body", "key", "fragment"),
    [
        ("[rollout]\nstrategy = \"groups\"\nerror_threshold = 1.5\n" + RELEASE, "rollout.error_threshold", "between 0 and 1"),
        ("[fleet]\ndevices = 0\n" + RELEASE, "fleet.devices", "greater than or equal to 1"),
        ("[fleet]\nwat = 3\n" + RELEASE, "fleet.wat", "unknown key"),
        ('[device]\nboot_s = {dist = "lognormal", median = -1, sigma = 0.3}\n' + RELEASE, "device.boot_s", "median"),
        ('[device]\nboot_s = {dist = "gamma", k = 2}\n' + RELEASE, "device.boot_s", "dist"),
        (RELEASE + 'defect = "gremlins"\n', "release[0].defect", "never_ready"),
        (RELEASE + 'parts = ["kernel"]\n', "release[0].parts", "unknown part"),
        (RELEASE + "defect_fraction = 2\n", "release[0].defect_fraction", "between 0 and 1"),
        ("[rollout]\ngroup_percent = [10, 5, 100]\n" + RELEASE, "rollout.group_percent", "increasing"),
        ("[rollout]\nincrement_factor = 9\n" + RELEASE, "rollout.increment_factor", "less than or equal to 5"),
        ("[update_model]\nengine = {PV_NOPE = 1}\n" + RELEASE, "update_model.engine", "PV_NOPE"),
        ("[fleet]\ndevices = 3\n", "release", "required"),
    ],
)
def test_bad_values_name_file_and_dotted_key(tmp_path, body, key, fragment):
    path = write(tmp_path, body)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: {key}: "), text
    assert fragment in text


def test_toml_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, "[fleet\n")
    with pytest.raises(ScenarioError, match="not valid TOML") as caught:
        load_scenario(path)
    assert str(path) in str(caught.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.toml")


def test_overrides_are_validated_too(tmp_path):
    path = write(tmp_path, RELEASE)
    assert load_scenario(path, **{"fleet.devices": 7}).fleet.devices == 7
    with pytest.raises(ScenarioError, match="fleet.devices"):
        load_scenario(path, **{"fleet.devices": -1})


def test_distributions_one_syntax():
    assert parse_dist(3) == Dist("constant", 3.0)
    assert parse_dist({"dist": "constant", "value": 2}) == Dist("constant", 2.0)
    assert parse_dist({"dist": "uniform", "low": 1, "high": 2}) == Dist("uniform", 1.0, 2.0)
    assert parse_dist({"dist": "lognormal", "median": 5, "sigma": 0.5}).typical == 5.0
    assert parse_dist({"dist": "exponential", "mean": 4}).kind == "exponential"
    for bad in ({"dist": "uniform", "low": 3, "high": 1}, {"dist": "lognormal", "median": 1}, True, "fast", -1):
        with pytest.raises(ValueError):
            parse_dist(bad)


def test_lognormal_median_is_the_median():
    import random

    rng = random.Random(4)
    dist = parse_dist({"dist": "lognormal", "median": 20, "sigma": 0.5})
    draws = sorted(dist.sample(rng) for _ in range(4001))
    assert 18.5 < draws[2000] < 21.5
