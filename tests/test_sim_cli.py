"""The pvsim run / compare / sweep commands and the files they write (bench: test_sim_bench.py)."""

from __future__ import annotations

import json
from pathlib import Path

from pvsim.cli import main
from pvsim.results import RESULT_KEYS

REPO = Path(__file__).resolve().parent.parent


def test_run_writes_results_timeline_plot_and_report(tmp_path, capsys):
    out = tmp_path / "qs"
    code = main(["run", str(REPO / "scenarios" / "quickstart.toml"), "--devices", "300", "--out", str(out), "--quiet"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert tuple(results) == RESULT_KEYS
    assert results["devices"] == 300 and results["update_model"] == "pantavisor"
    assert results["rollout_state"] == "paused"  # the bad release is caught
    assert results["final_revision_counts"]["bsp-2.0"] == 0
    assert results["time_to_95pct_s"] is None
    lines = (out / "timeline.csv").read_text().splitlines()
    assert lines[0] == "t_s,0,web-1.1,bsp-2.0,mb_moved"
    assert all(sum(map(int, line.split(",")[1:-1])) == 300 for line in lines[1:])
    assert (out / "adoption.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.html").read_text()
    assert "data:image/png;base64," in report and "<img" in report and "src=\"http" not in report


def test_run_json_and_overrides(tmp_path):
    path = tmp_path / "r.json"
    scenario = REPO / "scenarios" / "strategy-study.toml"
    args = ["run", str(scenario), "--devices", "200", "--seed", "5", "--strategy", "all-at-once", "--json", str(path), "--quiet"]
    assert main(args) == 0
    results = json.loads(path.read_text())
    assert results["seed"] == 5 and results["strategy"] == "all-at-once" and results["devices"] == 200


def test_run_reports_bad_scenario_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[rollout]\nerror_threshold = 3\n[[release]]\nname = "x"\n')
    assert main(["run", str(bad), "--quiet", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: rollout.error_threshold: must be between 0 and 1" in err
    assert not (tmp_path / "o").exists()


def test_compare_models_over_seeds(tmp_path, capsys):
    out = tmp_path / "cmp"
    scenario = REPO / "scenarios" / "never-ready-app.toml"
    args = ["compare", str(scenario), "--models", "ab-image,pantavisor", "--seeds", "2", "--devices", "300", "--workers", "1", "--out", str(out)]
    assert main(args) == 0
    doc = json.loads((out / "compare.json").read_text())
    summary = doc["summary"]
    assert summary["ab-image"]["bricked"]["mean"] > 0
    assert summary["pantavisor"]["bricked"]["mean"] == 0
    assert summary["pantavisor"]["rolled_back"]["mean"] > 0
    assert summary["ab-image"]["bricked"]["n"] == 2
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "n=2" in text and "of 2)" in text  # n per cell, and how many seeds reached each time
    assert summary["pantavisor"]["time_to_95pct_s"]["reached"] <= 2


def test_compare_rejects_unknown_strategy(tmp_path, capsys):
    scenario = REPO / "scenarios" / "strategy-study.toml"
    assert main(["compare", str(scenario), "--strategies", "yolo", "--seeds", "1"]) == 1
    assert "yolo" in capsys.readouterr().err


def test_sweep_is_factorial_and_writes_csv(tmp_path, capsys):
    out = tmp_path / "sw"
    scenario = REPO / "scenarios" / "strategy-study.toml"
    args = ["sweep", str(scenario), "--grid", "rollout.strategy=all-at-once,groups", "--grid", "fleet.nosuch=1",
            "--seeds", "2", "--devices", "100", "--workers", "1", "--out", str(out)]
    assert main(args) == 1  # an unknown key: a clear error before anything runs, nothing written
    assert "fleet.nosuch: unknown key" in capsys.readouterr().err
    assert not out.exists()
    args = ["sweep", str(scenario), "--grid", "rollout.strategy=all-at-once,groups", "--grid", "faults.power_cuts_per_device_day=0,100",
            "--seeds", "2", "--devices", "100", "--workers", "1", "--out", str(out)]
    assert main(args) == 0
    doc = json.loads((out / "sweep.json").read_text())
    assert len(doc["summary"]) == 4
    rows = (out / "sweep.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 2
    cut = doc["summary"]["rollout.strategy=all-at-once, faults.power_cuts_per_device_day=100"]["power_cuts"]["mean"]
    calm = doc["summary"]["rollout.strategy=all-at-once, faults.power_cuts_per_device_day=0"]["power_cuts"]["mean"]
    assert cut > calm == 0


def test_summary_table_reads_as_a_person_would():
    from rich.console import Console

    from pvsim.runner import run_scenario
    from pvsim.scenario import load_scenario
    from pvsim.summary import summary_table

    result = run_scenario(load_scenario(REPO / "scenarios" / "quickstart.toml", **{"fleet.devices": 300}))
    console = Console(record=True, width=200)
    console.print(summary_table(result))
    text = console.export_text()
    assert result.results["time_to_95pct_s"] is None  # the bad release was paused
    assert "time_to_95pct_s  │" in text and "not reached" in text and "None" not in text
    gigabytes = result.results["bytes_downloaded"] / 1e9
    assert f"{result.results['bytes_downloaded']} ({gigabytes:.1f} GB)" in text
