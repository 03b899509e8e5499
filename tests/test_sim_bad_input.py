"""Bad input to `pvsim run`: exit code 1, one line naming the file and key (or the option), nothing
written, and nothing simulated (output paths are checked before the simulation starts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvsim.cli import main
from pvsim.outputs import OutputError, check_output_paths
from pvsim.scenario import ScenarioError, check_option, load_scenario, validate_scenario
from pvsim.world import World

SMALL = '[fleet]\ndevices = 20\n[run]\nuntil_s = 3600\n'
RELEASE = '[[release]]\nname = "r1"\n'


@pytest.fixture
def no_simulation(monkeypatch):
    """Fail the test if a simulation starts: bad input must be refused before that."""

    def refuse(self):
        raise AssertionError("the simulation started despite bad input")

    monkeypatch.setattr(World, "run", refuse)


def run_rejected(capsys, tmp_path: Path, scenario: Path, *extra: str) -> str:
    """Run `pvsim run` expecting exit code 1; return its one error line. --out must stay absent."""
    out = tmp_path / "out"
    code = main(["run", str(scenario), "--quiet", "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 1, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvsim: error: "), captured.err
    assert captured.out == ""
    assert not out.exists()
    return lines[0].removeprefix("pvsim: error: ")


def scenario_file(tmp_path: Path, content: bytes | str) -> Path:
    path = tmp_path / "s.toml"
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        # a binary file given by mistake (here a PNG header)
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a binary file, not TOML text at line 3, column 1"),
        # Latin-1 text: TOML must be UTF-8
        ('description = "café"\n'.encode("latin-1") + RELEASE.encode(), "not UTF-8 text (byte 0xe9) at line 1, column 19"),
    ],
    ids=["binary", "latin-1"],
)
def test_file_that_is_not_utf8_text(tmp_path, capsys, no_simulation, content, expected):
    path = scenario_file(tmp_path, content)
    assert run_rejected(capsys, tmp_path, path) == f"{path}: {expected}"


def test_negative_seed_in_the_file(tmp_path, capsys, no_simulation):
    path = scenario_file(tmp_path, "[fleet]\nseed = -3\n" + RELEASE)
    line = run_rejected(capsys, tmp_path, path)
    assert line.startswith(f"{path}: fleet.seed: ") and "greater than or equal to 0" in line


def test_release_after_the_end_of_the_run(tmp_path, capsys, no_simulation):
    body = SMALL + RELEASE + '[[release]]\nname = "r2"\nat_s = 7200\n'
    path = scenario_file(tmp_path, body)
    line = run_rejected(capsys, tmp_path, path)
    assert line.startswith(f"{path}: release[1].at_s: 7200 s is not before run.until_s (3600 s)"), line


def test_release_exactly_at_the_end_is_refused_too():
    # the run stops at until_s: a release offered then reaches no device
    data = {"run": {"until_s": 100}, "release": [{"name": "r1", "at_s": 100}]}
    with pytest.raises(ScenarioError, match=r"release\[0\]\.at_s"):
        validate_scenario(data, "x.toml")


def test_reversed_maintenance_time_zones(tmp_path, capsys, no_simulation):
    body = SMALL + '[rollout]\nstrategy = "maintenance-window"\ntimezones_h = [3, -8]\n' + RELEASE
    path = scenario_file(tmp_path, body)
    line = run_rejected(capsys, tmp_path, path)
    assert line == f"{path}: rollout.timezones_h: must be [westmost, eastmost]: 3 is east of -8"


def test_time_zones_must_be_utc_offsets(tmp_path):
    path = scenario_file(tmp_path, SMALL + "[rollout]\ntimezones_h = [-8, 30]\n" + RELEASE)
    with pytest.raises(ScenarioError, match="rollout.timezones_h: UTC offsets must lie between -12 and 14"):
        load_scenario(path)


def test_whole_scenario_checks_name_their_key_not_top_level(tmp_path):
    body = SMALL + RELEASE + '[[release]]\nname = "r1"\nat_s = 10\n'
    with pytest.raises(ScenarioError) as caught:
        load_scenario(scenario_file(tmp_path, body))
    assert ": release[1].name: 'r1' is already the name of an earlier release" in str(caught.value)
    assert "top level" not in str(caught.value)


def test_negative_seed_option(tmp_path, capsys, no_simulation):
    path = scenario_file(tmp_path, SMALL + RELEASE)
    line = run_rejected(capsys, tmp_path, path, "--seed", "-3")
    assert line == "--seed: Input should be greater than or equal to 0"


def test_out_pointing_at_a_file(tmp_path, capsys, no_simulation):
    path = scenario_file(tmp_path, SMALL + RELEASE)
    target = tmp_path / "taken"
    target.write_text("keep me\n")
    code = main(["run", str(path), "--quiet", "--out", str(target)])
    assert code == 1
    assert capsys.readouterr().err.splitlines() == [f"pvsim: error: --out: {target} is a file, not a folder"]
    assert target.read_text() == "keep me\n"


def test_json_pointing_at_a_folder_writes_no_other_output(tmp_path, capsys, no_simulation):
    path = scenario_file(tmp_path, SMALL + RELEASE)
    folder = tmp_path / "somewhere"
    folder.mkdir()
    line = run_rejected(capsys, tmp_path, path, "--json", str(folder))
    assert line == f"--json: {folder} is a folder, not a file"
    assert list(folder.iterdir()) == []


def test_output_path_checks(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    check_output_paths(tmp_path / "new" / "out", tmp_path / "new" / "r.json")  # creatable: fine
    check_output_paths(tmp_path, a_file)  # existing folder, existing file: fine
    check_output_paths(None, None)
    with pytest.raises(OutputError, match="--out: .* is a file, not a folder"):
        check_output_paths(a_file / "sub", None)
    with pytest.raises(OutputError, match="--json: .* is a file, not a folder"):
        check_output_paths(None, a_file / "r.json")
    (tmp_path / "out" / "report.html").mkdir(parents=True)
    with pytest.raises(OutputError, match=r"--out: .*report\.html is a folder, where a file would be written"):
        check_output_paths(tmp_path / "out", None)
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_option_checked_by_the_keys_own_rule():
    check_option("--seed", "fleet.seed", 0)
    check_option("--seed", "fleet.seed", None)
    with pytest.raises(ScenarioError, match="^--devices: Input should be greater than or equal to 1$"):
        check_option("--devices", "fleet.devices", 0)


def test_sweep_help_shows_a_single_percent_sign(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "95 % confidence" in text and "%%" not in text


def test_shard_check_json_pointing_at_a_folder(tmp_path, capsys, no_simulation):
    path = scenario_file(tmp_path, SMALL + RELEASE)
    assert main(["shard-check", str(path), "--json", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines() == [f"pvsim: error: --json: {tmp_path} is a folder, not a file"]


@pytest.mark.parametrize(
    "command",
    [["compare", "--strategies", "all-at-once,canary"], ["sweep", "--grid", "fleet.devices=10,20"]],
    ids=["compare", "sweep"],
)
def test_compare_and_sweep_out_pointing_at_a_file(tmp_path, capsys, monkeypatch, command):
    """--out is checked before the runs (which may take hours), not after them."""

    def refuse(*args, **kwargs):
        raise AssertionError("runs started despite an unusable --out")

    monkeypatch.setattr(f"pvsim.cli.{command[0]}.run_with_progress", refuse)
    path = scenario_file(tmp_path, SMALL + RELEASE)
    target = tmp_path / "taken"
    target.write_text("keep me\n")
    code = main([command[0], str(path), *command[1:], "--seeds", "1", "--out", str(target)])
    assert code == 1
    assert capsys.readouterr().err.splitlines() == [f"pvsim: error: --out: {target} is a file, not a folder"]
    assert target.read_text() == "keep me\n"
