"""Same scenario and seed, same results; the JSON on disk is byte-identical apart from wall time
and peak RSS."""

from __future__ import annotations

import json

from pvsim.report import write_results_json
from pvsim.testing import run

NOISY = ("wall_s", "peak_rss_mb")
FAULTY = {
    "fleet.devices": 150,
    "faults.power_cuts_per_device_day": 50,
    "faults.network_loss_probability": 0.2,
    "faults.hub_outages_per_day": 20,
    "release": [
        {"name": "r1", "parts": ["app:web"]},
        {"name": "r2", "at_s": 3000, "parts": ["bsp"], "defect": "kernel_panic", "defect_fraction": 0.3},
    ],
    "rollout.strategy": "groups",
}


def _stable_bytes(tmp_path, name, **kw):
    result = run(**kw)
    path = tmp_path / name
    write_results_json(result, path)
    doc = json.loads(path.read_text())
    for key in NOISY:
        doc[key] = None
    return json.dumps(doc, sort_keys=False).encode(), result


def test_same_seed_same_bytes(tmp_path):
    a, ra = _stable_bytes(tmp_path, "a.json", **FAULTY)
    b, rb = _stable_bytes(tmp_path, "b.json", **FAULTY)
    assert a == b
    assert ra.timeline == rb.timeline
    assert ra.releases[1]["halted_at_s"] == rb.releases[1]["halted_at_s"]


def test_progress_chunks_change_no_result():
    """The progress bar runs the simulation in chunks; every result, the event count included,
    is the one of a run in one go (SimPy's stop events are not counted as the twin's)."""
    from pvsim.runner import run_scenario
    from pvsim.testing import scenario

    whole = run(**FAULTY).results
    chunked = run_scenario(scenario(**FAULTY), progress=lambda now, until: None, chunks=37).results
    for key in NOISY:
        whole.pop(key), chunked.pop(key)
    assert whole == chunked


def test_other_seed_other_results(tmp_path):
    a, _ = _stable_bytes(tmp_path, "a.json", **FAULTY)
    c, _ = _stable_bytes(tmp_path, "c.json", **{**FAULTY, "fleet.seed": 2})
    assert a != c


def test_per_device_facts_do_not_depend_on_the_strategy():
    from pvsim.runner import model_factory
    from pvsim.testing import scenario
    from pvsim.world import World

    one = World(scenario(**{"rollout.strategy": "all-at-once"}), model_factory("ab-image")).table
    two = World(scenario(**{"rollout.strategy": "canary"}), model_factory("ab-image")).table
    assert one.link_mb_s == two.link_mb_s and one.phase == two.phase and one.defect_u == two.defect_u


def test_byte_identical_across_processes_and_hash_seeds(tmp_path):
    """Separate interpreters with different string-hash seeds (set iteration orders) must agree."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    scenario = repo / "scenarios" / "power-cut-storm.toml"
    outputs = []
    for hash_seed in ("1", "2"):
        path = tmp_path / f"r{hash_seed}.json"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        cmd = [sys.executable, "-m", "pvsim", "run", str(scenario), "--devices", "80", "--json", str(path), "--quiet"]
        subprocess.run(cmd, check=True, env=env, cwd=repo, timeout=300)
        doc = json.loads(path.read_text())
        for key in NOISY:
            doc.pop(key)
        outputs.append(json.dumps(doc))
    assert outputs[0] == outputs[1]
