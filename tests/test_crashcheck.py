"""The whole crash-point enumeration, both orderings, plus the CLI contract."""

from __future__ import annotations

import json

import pytest

from pvsim.cli import main
from pvsim.crashcheck import UNNAMED, WINDOWS, crashcheck, kinds, window_of
from shared.engine.config import Ordering
from shared.engine.diagram import render

pytestmark = pytest.mark.xdist_group("crashcheck")


@pytest.fixture(scope="module")
def hardened():
    return crashcheck(Ordering.HARDENED)


@pytest.fixture(scope="module")
def faithful():
    return crashcheck(Ordering.FAITHFUL)


def test_hardened_has_no_violation(hardened):
    assert hardened.violation_count == 0, "\n".join(
        v for k in hardened.kinds.values() for v in k.violations
    )
    assert set(hardened.kinds) == set(kinds()) and len(hardened.kinds) >= 12
    assert hardened.total_crash_points > 500


def test_every_kind_ends_as_expected_without_a_cut_and_sees_both_outcomes(hardened):
    for name, report in hardened.kinds.items():
        kind = kinds()[name]
        assert report.reference == f"{kind.expected} {kind.expected_status.value}", name
        assert report.outcomes[kind.expected] > 0
    # a power cut while a good reboot update is tested is a rollback (§3.9)
    assert hardened.kinds["bsp-good"].outcomes["old"] > 0


def test_faithful_reproduces_the_done_before_pv_rev_window(faithful):
    assert faithful.violation_count > 0
    done_window = [v for v in faithful.kinds["bsp-good"].violations if "DONE-before-pv_rev" in v]
    assert any(v.startswith("before step") and ", then" not in v for v in done_window)
    torn = [v for v in faithful.kinds["bsp-good"].violations if "torn" in v]
    assert torn, "the in-place env rewrite should tear"


def test_the_enumeration_stays_small(hardened, faithful):
    """Each crash point is one short device run, so their number is the check's cost (1788
    hardened and 1762 faithful today): a change that multiplies it shows here, on any machine."""
    assert hardened.total_crash_points < 2000 and faithful.total_crash_points < 2000


def test_cli_writes_json_and_exit_codes(tmp_path, capsys):
    out = tmp_path / "h.json"
    args = ["crashcheck", "--kind", "bsp-good", "--kind", "app-good"]
    assert main([*args, "--ordering", "hardened", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["ordering"] == "hardened" and doc["violations"] == 0
    assert set(doc["kinds"]) == {"bsp-good", "app-good"}
    assert doc["total_crash_points"] == sum(k["crash_points"] for k in doc["kinds"].values())
    assert {"crash_points", "outcomes", "violations"} <= set(doc["kinds"]["bsp-good"])
    bad = tmp_path / "f.json"
    assert (
        main(["crashcheck", "--ordering", "faithful", "--kind", "bsp-good", "--json", str(bad)])
        == 1
    )
    assert json.loads(bad.read_text())["violations"] > 0
    assert "DONE-before-pv_rev" in capsys.readouterr().out


def test_state_machine_doc_is_not_stale():
    from pathlib import Path

    doc = Path(__file__).resolve().parent.parent / "docs" / "state-machine.md"
    assert doc.read_text() == render(), (
        "regenerate: python -m shared.engine.diagram > docs/state-machine.md"
    )


def test_counter_latch_hardened_has_no_violation_and_retries_the_try():
    from shared.engine.config import BootLatch, Config

    report = crashcheck(Ordering.HARDENED, config=Config(boot_latch=BootLatch.COUNTER))
    assert report.violation_count == 0 and report.latch == "counter"
    # with three attempts a power cut while testing a good kernel no longer rolls back
    assert report.kinds["bsp-good"].outcomes["old"] == 0


def test_faithful_gc_removes_the_revision_pv_try_still_names(faithful):
    gc = faithful.kinds["gc-during-update"].violations
    assert any("I3 pv_try=2: its trail is missing" in v for v in gc)


def test_updated_becomes_done_after_a_power_cycle(hardened):
    finals = hardened.kinds["app-good"].finals
    assert any(k.startswith("new UPDATED") for k in finals)
    assert any(k.startswith("new DONE") for k in finals)  # the cut made it a try-boot, committed
    panic = hardened.kinds["bsp-panic"].finals
    assert set(panic) == {"old ERROR 'Unexpected rollback'"}


def test_every_named_window_is_found_and_every_faithful_violation_is_named(faithful):
    """docs/orderings.md names W1-W4; crashcheck must find each, and name every violation."""
    assert {w.name for w in WINDOWS} == {"W1", "W2", "W3", "W4"}
    assert all(faithful.windows[w.name] > 0 for w in WINDOWS), faithful.windows
    assert faithful.windows[UNNAMED] == 0
    assert sum(faithful.windows.values()) == faithful.violation_count
    assert window_of("inside step 3 (env pv_rev=1 (in place)): I1 no bootable revision: boot env "
                     "unreadable (torn write): no pv_rev to boot") == "W1"
    assert window_of("I5 reboot loop: 9 boots without quiescence") == UNNAMED


def test_counter_latch_faithful_shows_the_done_resume_window():
    from shared.engine.config import BootLatch, Config

    report = crashcheck(Ordering.FAITHFUL, ["bsp-good"], Config(boot_latch=BootLatch.COUNTER))
    assert report.windows["W4"] > 0 and report.windows[UNNAMED] == 0


def test_cli_without_ordering_reports_both(tmp_path, capsys):
    out = tmp_path / "both.json"
    assert main(["crashcheck", "--kind", "bsp-good", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["orderings"]) == {"faithful", "hardened"}
    summary = doc["summary"]
    assert summary["hardened"]["violations"] == 0 and summary["hardened"]["as_expected"]
    assert summary["faithful"]["violations"] > 0 and summary["faithful"]["as_expected"]
    assert set(summary["faithful"]["windows"]) <= {"W1", "W2", "W3", "W4"}
    assert doc["orderings"]["faithful"]["windows"] == summary["faithful"]["windows"]
    printed = capsys.readouterr().out
    assert "faithful: " in printed and "hardened: " in printed and "W2 DONE before pv_rev" in printed
