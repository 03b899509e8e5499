"""Performance shortcuts change nothing: the shared factory wake (PVSIM_ENGINE_MEMO) gives the same
results.json as settling every device on its own, sleeping through a batch of writes gives the same
results as waking when it lands, devices that end an update alike share one disk only until one
writes, and Updater.copy is a faithful, independent copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pvsim.device import DeviceRun
from pvsim.pantavisor import PantavisorModel
from pvsim.pantavisor.update import DeviceUpdate
from pvsim.report import write_results_json
from pvsim.runner import run_scenario
from pvsim.scenario import load_scenario
from pvsim.world import World
from shared.engine import commands as C
from shared.engine import events as E
from shared.engine.updater import Updater

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
NOISY = ("wall_s", "peak_rss_mb")


def _results(tmp_path: Path, name: str, devices: int, **overrides: object) -> dict:
    result = run_scenario(load_scenario(SCENARIOS / f"{name}.toml", **{"fleet.devices": devices, **overrides}))
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


# little free storage: devices collect garbage to make room for a release (a GC in a batch)
_LOW_STORAGE = {"device.free_storage_mb": {"dist": "uniform", "low": 40, "high": 90}}


@pytest.mark.parametrize(
    ("name", "devices", "overrides"),
    [
        ("quickstart", 300, {}),
        ("power-cut-storm", 300, {}),
        ("hub-flaps-during-testing", 300, {}),
        ("bandwidth-limited", 300, {}),
        ("quickstart", 1000, _LOW_STORAGE),
    ],
)
def test_sleeping_through_writes_changes_nothing_but_the_event_count(tmp_path, monkeypatch, name, devices, overrides):
    """DeviceUpdate.SLEEP_THROUGH_WRITES: a batch of writes after which the device only sleeps
    costs one event instead of two; every figure but the event count stays the same."""
    merged = _results(tmp_path, name, devices, **overrides)
    monkeypatch.setattr(DeviceUpdate, "SLEEP_THROUGH_WRITES", False)
    landed = _results(tmp_path, name, devices, **overrides)
    assert merged["committed"] > 0
    assert merged["events"] < landed["events"] * 0.9, (merged["events"], landed["events"])
    merged.pop("events"), landed.pop("events")
    assert merged == landed


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


def _fingerprint_reads_every_slot(obj, exempt=frozenset()):
    """Replacing any field (but the exempt ones) by a foreign value changes the fingerprint or
    breaks it: a field the fingerprint did not read would let two different engines be shared."""
    base = obj.fingerprint()
    missed = []
    for slot in type(obj).__slots__:
        if slot in exempt:
            continue
        saved = getattr(obj, slot)
        setattr(obj, slot, object())
        try:
            if obj.fingerprint() == base:
                missed.append(slot)
        except Exception:
            pass  # it read the field
        finally:
            setattr(obj, slot, saved)
    assert not missed, f"{type(obj).__name__}.fingerprint ignores {missed}"


def test_engine_fingerprint_covers_every_field():
    from pvsim.revisions import RevisionSet
    from pvsim.testing import scenario
    from shared.engine.containers import Containers, _Rec
    from shared.engine.updater import _Update

    revs = RevisionSet(scenario())
    updater, _ = _booted(revs.revisions[0].state)
    updater.update = _Update("1", revs.revisions[1].state, 0)
    _fingerprint_reads_every_slot(updater, exempt={"_out"})
    _fingerprint_reads_every_slot(updater.update)
    containers = updater.containers
    assert isinstance(containers, Containers)
    # the layout follows from the state and the config, both in the fingerprint
    _fingerprint_reads_every_slot(containers, exempt={"layout"})
    rec = next(iter(containers.recs.values()))
    assert isinstance(rec, _Rec)
    # a record's spec, goal and group follow from the state, in Containers.fingerprint
    with_exempt = {"spec", "goal", "group"}
    _fingerprint_reads_every_slot(rec, exempt=with_exempt)


def test_devices_share_engines():
    """The fleet holds one engine per distinct engine state, far fewer than devices, and most
    steps are looked up rather than computed."""
    from pvsim.pantavisor import PantavisorModel
    from pvsim.world import World

    scenario = load_scenario(SCENARIOS / "quickstart.toml", **{"fleet.devices": 2000})
    world = World(scenario, PantavisorModel)
    world.run()
    memo = world.model.memo
    steps = world.env.events  # an upper bound's companion: every SimPy event of the run
    assert memo.shared
    assert len(memo.states) < 200, len(memo.states)
    assert memo.computed < steps / 4, (memo.computed, steps)


def test_metadata_memo_key_decides_the_answer():
    """Two metadata answers with the same Updater.memo_key get the same commands and leave equal
    engines; answers whose objects do not fit have no key (their figures matter)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from pvsim.revisions import RevisionSet
    from pvsim.testing import scenario

    revs = RevisionSet(scenario())
    factory, new = revs.revisions[0].state, revs.revisions[1].state
    updater, _ = _booted(factory)
    for c in factory.containers:
        updater.handle(E.ContainerStarted(c.name))
        updater.handle(E.ContainerReady(c.name))
    commands = updater.handle(E.PendingSteps((E.Step("1", new),)))
    (fetch,) = [c for c in commands if type(c).__name__ == "FetchMetadata"]
    sizes = {sha: 1_000_000 for sha in fetch.shas}
    need = len(sizes) * 1_000_000

    def answer(free: int):
        engine = updater.copy()
        event = E.MetadataReceived("1", sizes, E.StorageStats(10 * need, free))
        key = engine.memo_key(event)
        out = engine.handle(event)
        return key, out, engine.fingerprint()

    @settings(max_examples=60, deadline=None)
    @given(st.integers(0, 3 * need), st.integers(0, 3 * need))
    def check(free_a: int, free_b: int):
        key_a, out_a, fp_a = answer(free_a)
        key_b, out_b, fp_b = answer(free_b)
        if key_a is not None and key_a == key_b:
            assert out_a == out_b and fp_a == fp_b
        if key_a is None:
            assert any(type(c).__name__ in ("RunGc", "PersistProgress") for c in out_a)

    check()
    fits, short = answer(10 * need), answer(0)
    assert fits[0] is not None and short[0] is None


def test_devices_that_end_an_update_alike_share_one_disk_until_one_writes():
    """PantavisorModel._share_disk: after a device-update the disk is swapped for an equal one
    other devices hold; a device that writes gets its own copy, the others keep theirs as it was."""
    world = World(load_scenario(SCENARIOS / "quickstart.toml", **{"fleet.devices": 300}), PantavisorModel)
    world.run()
    model = world.model
    brains = list(model.brains.values())
    disks = {id(brain.disk) for brain in brains}
    assert len(brains) == 300 and len(disks) <= 10, len(disks)
    first, second = [b for b in brains if b.disk is brains[0].disk][:2]
    shared = second.disk
    trails_before, pv_rev_before = dict(shared.trails), shared.pv_rev
    run = DeviceRun(world, 0, None)  # type: ignore[arg-type]
    model._apply(run, first, C.DeleteRevision(pv_rev_before))
    model._apply(run, first, C.SetBootEnv(pv_rev="9"))
    assert first.disk is not shared and pv_rev_before not in first.disk.trails and first.disk.pv_rev == "9"
    assert second.disk is shared and shared.trails == trails_before and shared.pv_rev == pv_rev_before
