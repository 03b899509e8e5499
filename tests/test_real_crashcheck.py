"""`pvreal crashcheck`: the real daemon killed at every durable step of an update (an exit injected
by PVTWIN_CRASH_AT_STEP), restarted on the same folder, and checked with pvsim's invariants.

The full set (every kind, both orderings, both sweeps) takes minutes (docs/real-backend.md);
here: the kill itself, a torn step, the invariants on a damaged folder, and a subset of kinds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pvreal.cli import build_parser, run
from pvreal.crashcheck.kinds import LEFT_OUT, kinds
from pvreal.crashcheck.runner import KindRun, copy_folder, crashcheck, unbootable
from pvreal.device.crashpoint import AT_STEP, KILLED, STEPS, TORN, CrashPlan
from pvreal.storage import Storage
from shared.engine import commands as C
from shared.engine.config import Ordering
from shared.engine.invariants import CutPoint
from shared.engine.progress import Msg, Progress, Status


@pytest.fixture(name="app_good")
def app_good_fixture(tmp_path: Path) -> KindRun:
    run = KindRun(kinds()["app-good"], "hardened", tmp_path / "app-good")
    run.install_base()
    return run


def test_the_kinds_are_pvsims_own_or_said_to_be_left_out():
    pvsim_kinds = {  # pvsim crashcheck --help, spelt out: pvreal may not import pvsim
        "app-good", "app-crash", "app-never-ready", "bsp-good", "bsp-panic", "system-container",
        "system-container-crash", "bad-signature", "corrupt-object", "hub-unreachable-testing",
        "local-run-commit", "gc-during-update",
    }
    assert set(kinds()) | set(LEFT_OUT) == pvsim_kinds
    assert not set(kinds()) & set(LEFT_OUT)


def test_the_plan_is_read_from_the_environment(tmp_path: Path):
    assert not CrashPlan.from_env({}).armed
    plan = CrashPlan.from_env({AT_STEP: "3", TORN: "1", STEPS: str(tmp_path / "log")})
    assert (plan.at, plan.torn, plan.steps_log) == (3, True, tmp_path / "log")
    record = Progress.make(Status.NEW, Msg.NOT_INSTALLED)
    assert plan.before(C.PersistProgress("x", record)) is False  # step 0 runs, and is logged
    assert (tmp_path / "log").read_text() == "0\tprogress x NEW 'Update not yet installed'\n"


def test_the_daemon_dies_right_before_its_nth_durable_step(app_good: KindRun):
    ref = app_good.run_once()
    assert len(ref.steps) > 5 and ref.outcome == "new"
    folder = app_good.work / "fresh" / "storage"
    copy_folder(app_good.base, folder)
    log = app_good.work / "fresh" / "killed.log"
    code, _ = app_good.daemon(folder, app_good.kind, {AT_STEP: "3", STEPS: str(log)})
    assert code == KILLED
    ran = zip(ref.tearable[:3], ref.steps[:3], strict=True)
    assert log.read_text().splitlines() == [f"{int(t)}\t{s}" for t, s in ran]


def test_a_replay_reaches_the_same_steps(app_good: KindRun):
    """The enumeration relies on it: step N of a replay is step N of the reference."""
    first, again = app_good.run_once(), app_good.run_once()
    assert first.steps == again.steps and first.record == again.record


def test_a_torn_link_leaves_part_of_the_trail_and_the_restart_repairs_it(app_good: KindRun):
    ref = app_good.run_once()
    link = ref.steps.index("link objects into trail locals/update")
    assert ref.tearable[link]
    folder = app_good.work / "fresh" / "storage"
    copy_folder(app_good.base, folder)
    code, _ = app_good.daemon(folder, app_good.kind, {AT_STEP: str(link), TORN: "1"})
    assert code == KILLED
    storage = Storage(folder)
    assert unbootable(storage, "locals/update") == "objects not linked into its trail"
    assert any((folder / "trails/locals/update").rglob("root.squashfs")) or any(
        (folder / "trails/locals/update").rglob("lxc.container.conf")
    )
    result = app_good.run_once((CutPoint(link, torn=True),))
    assert (result.outcome, result.violations) == ("new", [])


def test_the_invariants_see_a_damaged_folder(app_good: KindRun):
    """The checks can fail: a committed trail whose object is gone, or not linked, or missing."""
    app_good.run_once()
    storage = Storage(app_good.run_root / "storage")
    assert unbootable(storage, "0") is None
    (storage.trail_dir("0") / "app" / "root.squashfs").unlink()
    assert unbootable(storage, "0") == "objects not linked into its trail"
    sha = storage.read_state("0")["bsp/kernel.img"]
    storage.objects.path(sha).unlink()
    assert unbootable(storage, "0") == "objects missing from the pool"
    storage.remove_revision("0")
    assert unbootable(storage, "0") == "its trail is missing"
    assert unbootable(storage, "") == "no revision set"


@pytest.mark.parametrize("name", ["local-run-commit", "app-crash"])
def test_every_step_of_a_kind_recovers(tmp_path: Path, name: str):
    """The first sweep of two kinds: each step, each torn step, a restart once quiet."""
    report = crashcheck(Ordering.HARDENED, [name], second_sweep=False, work=tmp_path).kinds[name]
    assert report.violations == []
    assert report.reference == f"{kinds()[name].expected} {kinds()[name].expected_status.value}"
    tearable = sum(1 for s in report.steps if s.startswith(("env ", "link ", "gc ")))  # TEARABLE
    assert report.crash_points == len(report.steps) + tearable + 1  # before, inside, once quiet


def test_the_command_prints_pvsims_summary_and_json(tmp_path: Path, capsys):
    out = tmp_path / "report.json"
    argv = ["crashcheck", "--ordering", "hardened", "--kind", "app-never-ready",
            "--no-second-sweep", "--json", str(out), "--work", str(tmp_path / "work")]
    assert run(build_parser(), argv) == 0
    doc = json.loads(out.read_text())
    points = doc["total_crash_points"]
    assert points > 10 and doc["violations"] == 0
    assert doc["kinds"]["app-never-ready"]["reference"] == "old ERROR"
    assert f"hardened: {points} crash points, 0 violations" in capsys.readouterr().out


# ------------------------------------------------------------------ a remote kind: the real Hub

HUB_KIND = "hub-unreachable-testing"


@pytest.fixture(name="hub_kind")
def hub_kind_fixture(tmp_path: Path) -> KindRun:
    run = KindRun(kinds()[HUB_KIND], "hardened", tmp_path / HUB_KIND)
    run.install_base()  # registers the device with a real Hub, which then publishes the update
    return run


def test_a_hub_update_whose_hub_goes_away_in_testing_rolls_back(hub_kind: KindRun):
    """The step comes from a real Hub over HTTP through the daemon's own Hub client; once the
    engine is TESTING every connection is refused, and the engine's rule fails the update."""
    ref = hub_kind.run_once()
    assert (ref.outcome, ref.violations) == ("old", [])
    assert ref.record is not None and ref.record.status is Status.ERROR
    assert ref.record.status_msg == Msg.HUB_NOT_STABLE
    rev = kinds()[HUB_KIND].rev
    assert ref.steps[0].startswith(f"progress {rev} QUEUED")  # the Hub's step was taken
    assert any(s.startswith(f"progress {rev} DOWNLOADING") for s in ref.steps)  # over HTTP
    assert any(s.startswith(f"progress {rev} TESTING") for s in ref.steps)
    again = hub_kind.run_once()  # the Hub's copy is fresh too: a replay is one
    assert again.steps == ref.steps and again.record == ref.record


def test_a_kill_after_the_download_of_a_hub_update_recovers(hub_kind: KindRun):
    ref = hub_kind.run_once()
    rebooting = next(i for i, s in enumerate(ref.steps) if "INPROGRESS 'Rebooting'" in s)
    result = hub_kind.run_once((CutPoint(rebooting),))
    assert (result.outcome, result.violations) == ("old", [])


def test_a_kill_during_the_download_of_a_hub_update_recovers(hub_kind: KindRun):
    """A device killed after it reported DOWNLOADING finds its step again: its Hub client asks
    for every pending status, as Pantavisor does (pantavisor.md §3.3; pantahub.c), not only NEW."""
    ref = hub_kind.run_once()
    downloading = next(i for i, s in enumerate(ref.steps) if "DOWNLOADING" in s)
    first = hub_kind.run_once((CutPoint(downloading),))
    assert first.violations == []
    # killed again once the recovery has reported DOWNLOADING to the Hub
    again = next(i for i, s in enumerate(first.steps) if "DOWNLOADING" in s)
    second = hub_kind.run_once((CutPoint(downloading), CutPoint(again)))
    assert (second.outcome, second.violations) == ("old", [])
