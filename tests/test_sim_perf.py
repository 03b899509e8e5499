"""Performance shortcuts change nothing: the shared factory wake (PVSIM_ENGINE_MEMO) gives the same
results.json as settling every device on its own, and Updater.copy is a faithful, independent copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pvsim.report import write_results_json
from pvsim.runner import run_scenario
from pvsim.scenario import load_scenario
from shared.engine import events as E
from shared.engine.updater import Updater

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
NOISY = ("wall_s", "peak_rss_mb")


def _results(tmp_path: Path, name: str, devices: int) -> dict:
    result = run_scenario(load_scenario(SCENARIOS / f"{name}.toml", **{"fleet.devices": devices}))
    path = tmp_path / f"{name}.json"
    write_results_json(result, path)
    doc = json.loads(path.read_text())
    for key in NOISY:
        doc.pop(key, None)
    return doc


@pytest.mark.parametrize(
    "name", ["quickstart", "power-cut-storm", "hub-flaps-during-testing", "bad-kernel"]
)
def test_factory_memo_changes_no_result(tmp_path, monkeypatch, name):
    monkeypatch.setenv("PVSIM_ENGINE_MEMO", "1")
    memo = _results(tmp_path, name, 300)
    monkeypatch.setenv("PVSIM_ENGINE_MEMO", "0")
    plain = _results(tmp_path, name, 300)
    assert memo["committed"] > 0
    assert memo == plain


def _booted(state):
    disk = E.DiskView("0", "0", "", {"0": E.TrailView(state)}, state.object_shas())
    return Updater.boot(disk)


def test_updater_copy_is_complete_and_independent():
    from pvsim.revisions import RevisionSet
    from pvsim.testing import scenario

    state = RevisionSet(scenario()).revisions[0].state
    original, _ = _booted(state)
    assert original.containers is not None, "the factory revision did not boot"
    twin = original.copy()
    for slot in Updater.__slots__:
        a, b = getattr(original, slot), getattr(twin, slot)
        if slot == "containers":
            assert a is not b and a.recs.keys() == b.recs.keys()
            assert [r.status for r in a.recs.values()] == [r.status for r in b.recs.values()]
            continue
        assert a == b, slot
        if isinstance(a, dict | set | list) and slot != "_trails":  # the disk's view is shared
            assert a is not b, f"{slot} shared between copies"
    # the copy moves on alone: its container records are its own
    name = state.containers[0].name
    out_twin = twin.handle(E.ContainerStarted(name))
    assert original.copy().handle(E.ContainerStarted(name)) == out_twin
    assert twin.containers.recs[name].status != original.containers.recs[name].status
