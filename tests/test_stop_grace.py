"""The stop grace period (SIGTERM, grace, SIGKILL): configurable as pvtwin's PVTWIN_STOP_GRACE
(`pvreal device run --stop-grace S`), and skipped when the container's init is already gone.

runc itself is not needed: `Runc.delete` (the only runc call of a stop) is replaced, and the
inits are plain processes of this test. Whether the grace was waited is observed by recording
`Runc.wait_exit` and `os.kill`, never by timing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pvreal import runc as runc_mod
from pvreal.cli import main as pvreal_main
from pvreal.runc import InitProcess, Runc
from shared.engine.config import Config, ConfigError


class RecordingRunc(Runc):
    """A Runc whose waits, signals and deletes are recorded (the waits still poll for real)."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.waits: list[tuple[str, float]] = []
        self.deleted: list[str] = []

    def wait_exit(self, cid: str, timeout: float) -> bool:
        self.waits.append((cid, timeout))
        return super().wait_exit(cid, timeout)

    def delete(self, cid: str, *, force: bool = False) -> None:
        self.deleted.append(cid)
        self.started.pop(cid, None)


@pytest.fixture
def signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    sent: list[tuple[int, int]] = []
    real_kill = runc_mod.os.kill

    def kill(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        real_kill(pid, sig)

    monkeypatch.setattr(runc_mod.os, "kill", kill)
    return sent


def test_an_init_already_gone_is_neither_signalled_nor_waited_for(tmp_path, signals):
    proc = subprocess.Popen(["true"])
    init = InitProcess.of(proc.pid)
    proc.wait()  # reaped: its /proc entry is gone
    r = RecordingRunc(tmp_path)
    r.started["pv-web"] = init
    result = r.stop("pv-web", grace=3600.0)
    assert result.how == "gone"
    assert r.waits == [] and signals == []  # the grace path was never entered
    assert r.deleted == ["pv-web"]


def test_an_init_that_ignores_sigterm_waits_the_grace_then_is_killed(tmp_path, signals):
    proc = subprocess.Popen(["sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.05; done"],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"  # trap is set
        r = RecordingRunc(tmp_path)
        r.started["pv-web"] = InitProcess.of(proc.pid)
        result = r.stop("pv-web", grace=0.2)
        assert result.how == "killed"
        assert r.waits[0] == ("pv-web", 0.2)  # the configured grace, not Pantavisor's 5 s
        assert [sig for _, sig in signals] == [runc_mod.signal.SIGTERM, runc_mod.signal.SIGKILL]
    finally:
        proc.kill()
        proc.wait()


def test_an_init_that_obeys_sigterm_is_not_killed(tmp_path, signals):
    proc = subprocess.Popen(["sh", "-c", "echo up; while :; do sleep 0.05; done"],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        r = RecordingRunc(tmp_path)
        r.started["pv-web"] = InitProcess.of(proc.pid)
        result = r.stop("pv-web", grace=3600.0)
        assert result.how == "exited"
        assert [sig for _, sig in signals] == [runc_mod.signal.SIGTERM]
    finally:
        proc.kill()
        proc.wait()


def test_the_grace_is_a_pvtwin_config_key():
    assert Config().stop_grace == 5.0  # Pantavisor's fixed value stays the default
    assert Config.from_mapping({"PVTWIN_STOP_GRACE": "1.5"}).stop_grace == 1.5
    assert Config.from_mapping({"PVTWIN_STOP_GRACE": 0}).stop_grace == 0.0
    with pytest.raises(ConfigError, match="negative"):
        Config.from_mapping({"PVTWIN_STOP_GRACE": "-1"})


def test_device_run_stop_grace_becomes_the_config_key(monkeypatch):
    import pvreal.device.service as service

    seen = {}
    monkeypatch.setattr(service, "serve", lambda options, socket: seen.update(options.config))
    monkeypatch.setattr("os.geteuid", lambda: 0)
    argv = ["device", "run", "--storage", "/nonexistent", "--stop-grace", "0.5"]
    assert pvreal_main(argv) == 0
    assert Config.from_mapping(seen).stop_grace == 0.5
