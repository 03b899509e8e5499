"""`pvreal ctl wait --until S` understands every final status of the engine
(shared.engine.progress.FINAL_STATUSES), stops as soon as the revision ends on another one, and
waits for DONE through UPDATED (which the next boot turns into DONE). The daemon is replaced by a
scripted sequence of progress records."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pvreal.cli import main as pvreal_main
from pvreal.ctrl.client import CtrlClient
from shared.engine.progress import FINAL_STATUSES, Status


def _script(monkeypatch: pytest.MonkeyPatch, *statuses: str) -> list[str]:
    """The daemon answers these statuses in turn, then the last one forever; returns the log of
    what was answered."""
    answered: list[str] = []
    records: Iterator[str] = iter(statuses)

    def progress(self: CtrlClient, rev: str) -> dict[str, str]:
        status = next(records, statuses[-1])
        answered.append(status)
        return {"status": status, "status-msg": f"msg of {status}"}

    monkeypatch.setattr(CtrlClient, "progress", progress)
    return answered


def _wait(until: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = pvreal_main(["ctl", "--socket", "/nonexistent.sock", "wait", "locals/x", "--until", until,
                      "--timeout", "30"])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("status", sorted(s.value for s in FINAL_STATUSES))
def test_every_final_status_can_be_waited_for(status, monkeypatch, capsys):
    _script(monkeypatch, "NEW", "INPROGRESS", status)
    rc, out, _ = _wait(status, capsys)
    assert (rc, out) == (0, f"locals/x: {status} msg of {status}\n")


@pytest.mark.parametrize("status", sorted(s.value for s in Status if s not in FINAL_STATUSES))
def test_a_status_that_is_not_final_is_a_usage_error(status, capsys):
    with pytest.raises(SystemExit) as exited:
        pvreal_main(["ctl", "--socket", "/x", "wait", "locals/x", "--until", status])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_another_final_status_ends_the_wait_at_once(monkeypatch, capsys):
    answered = _script(monkeypatch, "INPROGRESS", "DONE")
    rc, out, err = _wait("UPDATED", capsys)  # a reboot update: it never becomes UPDATED
    assert rc == 1 and out.startswith("locals/x: DONE")
    assert "did not reach UPDATED (it ended DONE)" in err
    assert answered == ["INPROGRESS", "DONE"]  # not polled on until the timeout


def test_waiting_for_done_goes_on_through_updated(monkeypatch, capsys):
    answered = _script(monkeypatch, "UPDATED", "UPDATED", "TESTING", "DONE")
    rc, out, _ = _wait("DONE", capsys)
    assert rc == 0 and out.startswith("locals/x: DONE")
    assert answered == ["UPDATED", "UPDATED", "TESTING", "DONE"]


def test_a_failure_ends_the_wait(monkeypatch, capsys):
    _script(monkeypatch, "INPROGRESS", "ERROR")
    rc, _, err = _wait("DONE", capsys)
    assert rc == 1 and "did not reach DONE (it ended ERROR)" in err
