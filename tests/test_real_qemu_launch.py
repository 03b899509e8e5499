"""`pvreal qemu run --update` and `pvreal ctl wait` know every final status (no QEMU needed).

An app-only update ends UPDATED, one that rebooted DONE: a wait that missed UPDATED would poll
on until its timeout."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pvreal.cli import build_parser
from pvreal.ctrl.client import CtrlClient
from pvreal.qemu import launch, scenarios
from shared.engine.progress import FINAL_STATUSES, Status


class EndedClient(CtrlClient):
    """A device whose update already ended with `status`: a second poll means the wait did not
    take that status as the end."""

    def __init__(self, status: Status):
        super().__init__("/nonexistent/pv-ctrl")
        self.status_ = status
        self.polls = 0

    def progress(self, rev: str) -> dict[str, Any] | None:
        self.polls += 1
        assert self.polls == 1, f"still waiting after {self.status_}"
        return {"status": self.status_.value, "status-msg": "", "progress": 100}


@pytest.mark.parametrize("status", sorted(FINAL_STATUSES))
def test_qemu_run_update_ends_at_every_final_status(tmp_path: Path, status: Status) -> None:
    source = tmp_path / "app-update.json"
    source.write_text(json.dumps({"#spec": "pantavisor-service-system@1"}))
    session = scenarios.Session(image=None, work=tmp_path)  # type: ignore[arg-type]
    session.client = EndedClient(status)  # type: ignore[assignment]
    pushed: list[str] = []
    session.push_and_run = lambda rev, state: pushed.append(rev)  # type: ignore[method-assign]
    session.wait_idle = lambda: {}  # type: ignore[method-assign]
    image = SimpleNamespace(kernel=tmp_path / "kernel", initrd=tmp_path / "initrd")

    launch.push_updates(session, image, [source])  # type: ignore[arg-type]

    assert pushed == ["locals/app-update"]
    assert session.steps[-1].result["status"] == status


def test_ctl_wait_accepts_every_final_status() -> None:
    parser = build_parser()
    for status in FINAL_STATUSES:
        args = parser.parse_args(["ctl", "--socket", "s", "wait", "locals/x", "--until", status])
        assert args.until == status
