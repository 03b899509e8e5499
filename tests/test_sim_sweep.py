"""pvsim sweep: stable per-run seeds, the tidy per-run table, the summary and the plots."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from pvsim.cli import main
from pvsim.scenario import load_scenario
from pvsim.sweep import make_jobs, run_jobs, run_seed, tidy_rows

REPO = Path(__file__).resolve().parent.parent
STUDY = REPO / "scenarios" / "strategy-study.toml"

SEED_OF = (
    "from pvsim.scenario import load_scenario; from pvsim.sweep import run_seed; "
    f"print(run_seed(load_scenario({str(STUDY)!r}), {{'rollout.strategy': 'groups'}}, 3))"
)


def test_run_seed_is_stable_across_processes_and_depends_on_point_and_seed():
    seeds = set()
    for hash_seed in ("1", "2"):  # str hashes differ between these interpreters; the seed must not
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", SEED_OF], env=env, cwd=REPO, capture_output=True, text=True, check=True)
        seeds.add(int(out.stdout))
    scenario = load_scenario(STUDY)
    assert seeds == {run_seed(scenario, {"rollout.strategy": "groups"}, 3)}
    assert run_seed(scenario, {"rollout.strategy": "canary"}, 3) not in seeds
    assert run_seed(scenario, {"rollout.strategy": "groups"}, 4) not in seeds
    # common random numbers: without the point, every variant of seed k shares one seed
    jobs = make_jobs(scenario, {"a": {"rollout.strategy": "groups"}, "b": {"rollout.strategy": "canary"}}, 2, True)
    assert [j.run_seed for j in jobs[:2]] == [j.run_seed for j in jobs[2:]]


def test_serial_and_process_pool_give_the_same_table():
    scenario = load_scenario(STUDY, **{"fleet.devices": 80})
    jobs = make_jobs(scenario, {"g": {"rollout.strategy": "groups"}, "a": {"rollout.strategy": "all-at-once"}}, 2)
    serial = tidy_rows(run_jobs(jobs, workers=1), ["rollout.strategy"])
    pooled = tidy_rows(run_jobs(jobs, workers=2), ["rollout.strategy"])
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in serial]
    assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in pooled]
    assert [r["rollout.strategy"] for r in serial] == ["groups", "groups", "all-at-once", "all-at-once"]


def test_sweep_cli_writes_tidy_table_summary_and_plots(tmp_path, capsys):
    out = tmp_path / "sw"
    args = ["sweep", str(STUDY), "--grid", "rollout.strategy=all-at-once,groups", "--grid",
            "faults.power_cuts_per_device_day=0,50", "--seeds", "2", "--devices", "80", "--workers", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    with (out / "sweep.csv").open(newline="") as handle:
        runs = list(csv.DictReader(handle))
    assert len(runs) == 2 * 2 * 2
    assert {"rollout.strategy", "faults.power_cuts_per_device_day", "seed", "run_seed", "bricked", "error"} <= set(runs[0])
    assert sorted({(r["rollout.strategy"], r["faults.power_cuts_per_device_day"]) for r in runs}) == [
        ("all-at-once", "0"), ("all-at-once", "50"), ("groups", "0"), ("groups", "50"),
    ]  # fmt: skip
    assert all(r["error"] == "" for r in runs)
    calm = [int(r["power_cuts"]) for r in runs if r["faults.power_cuts_per_device_day"] == "0"]
    stormy = [int(r["power_cuts"]) for r in runs if r["faults.power_cuts_per_device_day"] == "50"]
    assert calm == [0, 0, 0, 0] and sum(stormy) > 0
    with (out / "summary.csv").open(newline="") as handle:
        summary = list(csv.DictReader(handle))
    assert len(summary) == 4 and {"committed_mean", "committed_ci95", "runs", "failed"} <= set(summary[0])
    assert all(row["runs"] == "2" and row["failed"] == "0" for row in summary)
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["failures"] == [] and doc["seeds"] == 2
    for key in ("rollout.strategy", "faults.power_cuts_per_device_day"):
        assert (out / f"plot-{key}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the Parquet table (pyarrow is installed by `make test`) holds the CSV's rows, typed
    import pyarrow.parquet as pq

    table = pq.read_table(out / "sweep.parquet").to_pylist()
    assert [str(r["run_seed"]) for r in table] == [r["run_seed"] for r in runs]
    assert [r["power_cuts"] for r in table] == [int(r["power_cuts"]) for r in runs]
    assert {r["faults.power_cuts_per_device_day"] for r in table} == {0, 50}
