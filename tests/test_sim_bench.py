"""`pvsim bench`: the twin and the reference model side by side, the figures it derives, its output
and its bad input. Small fleets only: the measurements themselves are not asserted (speed targets
are shown by the benchmark's printed ratios, not by timed tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pvsim.bench import RssSampler, _median_ratio, _median_run, bench, bench_size, us_per_update
from pvsim.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_one_size_runs_every_model_interleaved_with_agreeing_outcomes():
    said = []
    row = bench_size(300, repeat=2, say=said.append)
    # round 1 in order, round 2 reversed: drift favours no model
    started = [line for line in said if not line.startswith("  ")]
    assert started == [f"300 devices, round {k}/2: {m}" for k, ms in ((1, ("twin", "interrupt", "predrawn")), (2, ("predrawn", "interrupt", "twin"))) for m in ms]
    assert len(said) == 2 * len(started) and said[1].startswith("  twin: ") and "µs per device-update" in said[1]
    for model in ("twin", "interrupt", "predrawn"):
        run = row[model]
        assert run["wall_s"] > 0 and run["peak_rss_mb"] > 0 and len(run["wall_s_rounds"]) == 2
        assert run["device_updates"] == row["twin"]["device_updates"] >= 300
        assert run["rollout_state"] == "paused"
        assert row["us_per_device_update"][model] == us_per_update(run)
    assert 0 < row["twin"]["events_per_device_update"] <= 40
    assert set(row["twin_over_reference"]) == set(row["twin_over_reference_cpu"]) == {"interrupt", "predrawn"}
    assert all(ratio > 0 for ratio in row["twin_over_reference"].values())
    assert "sharded" not in row  # below a million devices only when asked


def test_ratio_is_the_median_of_paired_rounds_and_the_run_shown_is_the_median_one():
    twin = [{"wall_s": 4.0, "cpu_s": 2.0}, {"wall_s": 9.0, "cpu_s": 3.0}, {"wall_s": 5.0, "cpu_s": 2.0}]
    ref = [{"wall_s": 2.0, "cpu_s": 1.0}, {"wall_s": 3.0, "cpu_s": 1.0}, {"wall_s": 1.0, "cpu_s": 1.0}]
    # per round 2, 3, 5: the median pairs a slow twin round with its own slow reference round
    assert _median_ratio(list(zip(twin, ref, strict=True)), "wall_s") == 3.0
    assert _median_ratio(list(zip(twin, ref, strict=True)), "cpu_s") == 2.0
    assert _median_run(twin) == {"wall_s": 5.0, "cpu_s": 2.0, "wall_s_rounds": [4.0, 9.0, 5.0]}
    assert us_per_update({"wall_s": 4.5, "device_updates": 20_000}) == 225.0


def test_rss_sampler_sees_memory_taken_and_given_back_inside_its_block():
    with RssSampler(every_s=0.005) as rss:
        block = bytearray(200 * 1024 * 1024)
        block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page
        import time

        time.sleep(0.05)
        del block
    assert rss.peak_mb - rss.before_mb >= 150


def test_sharded_twin_is_reported_beside_the_unsharded_one():
    row = bench_size(400, models=["twin", "sharded"], shards=2)
    sharded = row["sharded"]
    assert sharded["shards"] == 2 and sharded["executor"] == "processes" and sharded["worker_processes"] == 2
    assert len(sharded["worker_peak_rss_mb"]) == 2
    assert sharded["shard_devices"] == [200, 200]
    assert len(sharded["shard_busy_s"]) == 2 and all(t > 0 for t in sharded["shard_busy_s"])
    assert sharded["epochs"] == 720  # 12 simulated hours of 60 s epochs
    assert sharded["peak_rss_mb_in_all"] > 0 and sharded["rollout_state"] == "paused"
    assert row["sharded_over_unsharded_wall"] == round(sharded["wall_s"] / row["twin"]["wall_s"], 3)
    assert "twin_over_reference" not in row  # no reference ran


def test_bench_command_prints_ratios_and_writes_json(tmp_path, capsys):
    path = tmp_path / "out" / "bench.json"
    assert main(["bench", "--devices", "200,300", "--devices", "200", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert [row["devices"] for row in report["sizes"]] == [200, 300]
    assert report["twin_cost_growth"]["from_devices"] == 200 and report["twin_cost_growth"]["to_devices"] == 300
    assert report["targets"]["twin_over_reference.interrupt"] == 2.0
    out = capsys.readouterr().out
    assert "twin ÷ interrupt" in out and "µs per device-update" in out and "memory_per_device_kb" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "lots"], "--devices: expected whole numbers"),
        (["--devices", "0"], "--devices: "),
        (["--models", "twin,yolo"], "--models: unknown model 'yolo'"),
        (["--repeat", "0"], "--repeat: must be at least 1"),
        (["--dask", "tcp://127.0.0.1:1", "--dask-local", "1"], "--dask-local: give --dask or --dask-local"),
    ],
)
def test_bad_options_are_one_line_errors(args, message, capsys):
    assert main(["bench", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_json_path_that_is_a_folder_fails_before_anything_runs(tmp_path, capsys):
    assert main(["bench", "--devices", "100", "--json", str(tmp_path)]) == 1
    assert "--json" in capsys.readouterr().err


def test_scenario_the_reference_cannot_model_is_refused(capsys):
    scenario = REPO / "scenarios" / "hub-flaps-during-testing.toml"
    assert main(["bench", "--devices", "100", "--scenario", str(scenario)]) == 1
    assert "faults.hub_outages_per_day" in capsys.readouterr().err


def test_library_call_without_models_picks_the_default_set():
    report = bench([150], repeat=1)
    assert set(report["sizes"][0]) >= {"twin", "interrupt", "predrawn", "twin_over_reference", "cpu_us_per_device_update"}
    assert "twin_cost_growth" not in report  # one size: nothing to grow from


def test_instructions_per_device_update_are_the_extra_instructions_of_the_extra_updates():
    from pvsim.bench_instructions import InstructionCountError, base_size, per_update

    # startup (1e9 in both runs) cancels: 400 more updates cost 2e8 more instructions
    assert per_update({"instructions": 1_200_000_000, "device_updates": 420}, {"instructions": 1_000_000_000, "device_updates": 20}) == 500_000
    assert (base_size(4000), base_size(100)) == (200, 20)
    with pytest.raises(InstructionCountError, match="more --devices"):
        per_update({"instructions": 5, "device_updates": 20}, {"instructions": 4, "device_updates": 20})


def test_instructions_are_counted_under_callgrind_side_by_side(tmp_path):
    """`pvsim bench --instructions`: each model under callgrind at N and N/20 devices, in its own
    process; the twin costs more instructions per device-update than the pre-drawn reference
    (it runs the engine, progress records and the disk), both figures in a sane range."""
    import shutil

    if shutil.which("valgrind") is None:
        pytest.skip("needs valgrind (apt-get install valgrind)")
    out = tmp_path / "ins.json"
    assert main(["bench", "--instructions", "--devices", "200", "--models", "twin,predrawn", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert (doc["devices"], doc["base_devices"]) == (200, 20)
    twin, ref = doc["models"]["twin"], doc["models"]["predrawn"]
    assert twin["device_updates"] > twin["base_device_updates"] and twin["device_updates"] == ref["device_updates"]
    assert 50_000 < ref["instructions_per_device_update"] < twin["instructions_per_device_update"] < 5_000_000
    assert doc["twin_over_reference"]["predrawn"] == round(twin["instructions_per_device_update"] / ref["instructions_per_device_update"], 3)


def test_instructions_refuse_what_they_cannot_count(capsys):
    assert main(["bench", "--instructions", "--devices", "200,400"]) == 1
    assert "--devices" in capsys.readouterr().err
    assert main(["bench", "--instructions", "--models", "sharded"]) == 1
    assert "--models" in capsys.readouterr().err
    assert main(["bench", "--instructions", "--repeat", "2"]) == 1
    assert "--instructions" in capsys.readouterr().err


def test_instructions_check_the_scenario_and_size_before_any_run(tmp_path, monkeypatch, capsys):
    import pvsim.bench_instructions as counting

    def no_run(*_args):
        raise AssertionError("nothing may run under callgrind for bad input")

    monkeypatch.setattr(counting, "count_run", no_run)
    assert main(["bench", "--instructions", "--devices", "50"]) == 1
    assert "--devices" in capsys.readouterr().err
    broken = tmp_path / "broken.toml"
    broken.write_text('[fleet]\ndevices = "many"\n')
    assert main(["bench", "--instructions", "--scenario", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "broken.toml" in err and len(err.strip().splitlines()) == 1
