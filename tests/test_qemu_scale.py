"""QEMU at scale, without booting: where hard-reset points land, the boot timeline followed line
by line (live output, boot-time marks, how boots end), run timeouts, initramfs compression."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pvreal.qemu import initramfs, resetpoints, runner, scenarios, timeline
from pvreal.qemu.resetpoints import AFTER_COMMIT, BEFORE_TRY, IN_TRY
from pvreal.qemu.runner import ConsoleLine

REV = "locals/reset-7-0"

# A console of two boots: the first is a try that the daemon reboots, the second is up.
CONSOLE = [
    (0.3, "PVGRUB: up"), (0.31, "PVGRUB: env pv_rev=[0] pv_try=[1] pv_trying=[]"),
    (0.32, "PVGRUB: first attempt of 1"), (0.33, "PVGRUB: booting rev 1"),
    (1.0, "PVGRUB: kernel loaded"), (2.0, "PVGRUB: initrd loaded"),
    (3.6, "[    0.100000] Linux version 6.1.0"), (4.7, "[    1.200000] Freeing initrd memory: 26796K"),
    (5.5, "PVTWIN INIT uptime=2.00"), (6.1, "PVTWIN BOOT pv_rev=1 pv_try=1 cmdline=x uptime=2.60"),
    (7.5, "PVTWIN DAEMON imported uptime=4.00"), (10.0, "PVTWIN DEVICE up booted=1 running=1 uptime=6.40"),
    (10.5, "PVTWIN STATUS rev=1 status=TESTING progress=90 running=1 msg="),
    (11.0, "PVTWIN DEVICE reboot: because"), (11.2, "PVTWIN REBOOT uptime=7.7"),
    (12.0, "PVGRUB: up"), (12.1, "PVGRUB: try of 1 already attempted, rollback to 0"),
    (16.0, "PVTWIN BOOT pv_rev=0 pv_try=1 cmdline=x uptime=2.5"),
]  # fmt: skip


def _lines() -> list[ConsoleLine]:
    return [ConsoleLine(t, text) for t, text in CONSOLE]


# ------------------------------------------------------------------ hard-reset points


@pytest.mark.parametrize("points", [2, 3, 5, 20])
def test_every_seed_puts_reset_points_before_the_try_and_after_the_commit(points: int) -> None:
    for seed in range(1, 60):
        anchors = resetpoints.plan_reset_anchors(points, seed)
        assert len(anchors) == points
        assert BEFORE_TRY in anchors and AFTER_COMMIT in anchors, (seed, anchors)
        if points >= 3:
            assert IN_TRY in anchors, (seed, anchors)
        counts = [anchors.count(a) for a in resetpoints.RESET_ANCHORS if a in anchors]
        assert max(counts) - min(counts) <= 1  # spread evenly over the branches


def test_reset_anchor_order_depends_on_the_seed_and_is_reproducible() -> None:
    assert resetpoints.plan_reset_anchors(6, 3) == resetpoints.plan_reset_anchors(6, 3)
    orders = {tuple(resetpoints.plan_reset_anchors(6, seed)) for seed in range(20)}
    assert len(orders) > 1


def test_landing_is_read_from_the_console_lines_before_the_reset() -> None:
    latched = f"PVGRUB: first attempt of {REV}"
    trying = f"PVTWIN ENV pv_rev=0 pv_try={REV}"
    committed = f"PVTWIN ENV pv_rev={REV}"
    assert resetpoints.landing(["PVTWIN STATUS x", trying], REV) == BEFORE_TRY
    assert resetpoints.landing([trying, "PVTWIN DEVICE reboot: x", latched], REV) == IN_TRY
    assert resetpoints.landing([trying, latched, committed], REV) == AFTER_COMMIT
    # another revision's lines, or a commit that still names a try, do not count
    assert resetpoints.landing([f"PVGRUB: first attempt of {REV}9"], REV) == BEFORE_TRY
    assert resetpoints.landing([f"PVTWIN ENV pv_rev={REV} pv_try=other"], REV) == BEFORE_TRY
    assert resetpoints.landing([f"PVTWIN ENV pv_rev={REV} pv_trying={REV}"], REV) == AFTER_COMMIT


def test_a_reset_after_the_commit_must_keep_the_new_revision() -> None:
    assert resetpoints.check_point(AFTER_COMMIT, REV, "0", REV) is None
    assert "lost the commit" in (resetpoints.check_point(AFTER_COMMIT, "0", "0", REV) or "")
    for where in (BEFORE_TRY, IN_TRY):  # pv_try may already be in the env: either is right
        assert resetpoints.check_point(where, "0", "0", REV) is None
    assert "neither" in (resetpoints.check_point(BEFORE_TRY, "locals/x", "0", REV) or "")


def test_reset_summary_counts_landings_and_outcomes() -> None:
    points = [
        {"landed": BEFORE_TRY, "committed": "old"},
        {"landed": AFTER_COMMIT, "committed": "new"},
        {"landed": AFTER_COMMIT, "committed": "new"},
    ]
    assert resetpoints.reset_summary(points) == {
        "landed": {BEFORE_TRY: 1, IN_TRY: 0, AFTER_COMMIT: 2},
        "committed": {"old": 1, "new": 2},
    }


def test_run_timeout_grows_with_hard_reset_points() -> None:
    base = scenarios.run_timeout(["factory"], 20)
    assert base == scenarios.BASE_TIMEOUT
    assert scenarios.run_timeout(["hard-reset"], 20) > scenarios.run_timeout(["hard-reset"], 5)
    # each point and the uncut baseline update get their share on top of the base
    assert scenarios.run_timeout(["hard-reset"], 20) == base + 21 * scenarios.SECONDS_PER_RESET_POINT


# ------------------------------------------------------------------ timeline, line by line


def test_follower_reports_each_boot_as_its_lines_arrive() -> None:
    seen: list[tuple[str, int, float]] = []
    follower = timeline.Follower(lambda event, boot: seen.append((event, boot.index, clock[0])))
    clock = [0.0]
    for line in _lines():
        clock[0] = line.t
        follower.feed(line)
    # each event came at the line that made it, not at the end
    assert [s for s in seen if s[0] != "event"] == [
        ("booted", 0, 6.1), ("up", 0, 10.0), ("ended", 0, 11.2), ("booted", 1, 16.0),
    ]  # fmt: skip
    assert ("event", 0, 10.5) in seen
    follower.finish(killed=True)
    assert seen[-1] == ("ended", 1, 16.0)
    assert [b.ended for b in follower.boots] == ["reboot", timeline.HOST_KILL]


def test_last_boot_is_labelled_by_who_ended_it() -> None:
    assert timeline.boots(_lines())[-1].ended == timeline.UNKNOWN_END  # watchdog, or unknown
    assert timeline.boots(_lines(), killed=True)[-1].ended == timeline.HOST_KILL
    # a boot that ended by itself keeps its own ending even when QEMU was killed afterwards
    powered = [*_lines(), ConsoleLine(17.0, "PVTWIN POWEROFF uptime=3")]
    assert timeline.boots(powered, killed=True)[-1].ended == "poweroff"
    # the host's QMP reset at 8.0 s ends boot 0: its console stops there
    cut = [line for line in _lines() if line.t <= 8.0 or line.t >= 12.0]
    result = timeline.boots(cut, resets=[8.0], killed=True)
    assert [b.ended for b in result] == [timeline.HOST_RESET, timeline.HOST_KILL]
    assert result[1].marks["start"] == 8.0
    # GRUB that cannot load a trail resets by itself
    failed = [ConsoleLine(1.0, "PVGRUB: up"), ConsoleLine(1.1, "PVGRUB: cannot boot rev 3, resetting")]
    assert timeline.boots(failed, killed=True)[0].ended == "GRUB could not load it"


def test_boot_breakdown_from_grub_lines_printk_and_uptime_marks() -> None:
    first = timeline.boots(_lines())[0]
    # the kernel's clock started at 3.5 s: the printk line at 3.6 s says 0.1 s
    assert first.marks["kernel"] == 3.5
    phases = dict(first.breakdown(short=True))
    assert phases == {
        "firmware": 0.3, "GRUB reads": 1.7, "hand-over": 1.5, "kernel+unpack": 1.2,
        "kernel->init": 0.8, "PID 1": 0.6, "imports": 1.4, "daemon": 2.5,
    }  # fmt: skip
    assert first.up_seconds() == 10.0
    assert "total: boot start -> device up" in timeline.render_breakdown(first)
    # the guest's own clock: from the kernel's start (printk 0) to each mark it stamped
    assert dict(first.guest_breakdown(short=True)) == {
        "kernel+unpack": 1.2, "kernel->init": 0.8, "PID 1": 0.6, "imports": 1.4, "daemon": 2.4,
    }  # fmt: skip
    assert "  2.50   2.40 s  daemon start -> device up" in timeline.render_breakdown(first)
    # the second boot starts where the first ended (its reboot line), not at QEMU start
    second = timeline.boots(_lines())[1]
    assert second.marks["start"] == 11.2 and second.up_seconds() is None


def test_render_boot_shows_the_decision_not_the_loading_lines() -> None:
    text = timeline.render_boot(timeline.boots(_lines())[0])
    assert "first attempt of 1" in text and "kernel loaded" not in text
    assert text.endswith("-> reboot")


# ------------------------------------------------------------------ runner and session


def test_console_listeners_get_each_line_while_the_process_runs(tmp_path: Path) -> None:
    got: list[str] = []
    argv = [sys.executable, "-c", "import sys\nfor i in range(3): print('line', i, flush=True)"]
    vm = runner.QemuRun(argv, tmp_path / "log", timeout=60)
    vm.on_line.append(lambda line: got.append(line.text))
    vm.on_line.append(lambda line: 1 / 0)  # a broken listener does not stop the capture
    with vm:
        assert vm.wait_exit(timeout=60) == 0
    assert got == ["line 0", "line 1", "line 2"]
    assert vm.killed is False and [line.text for line in vm.lines][-1] == "line 2"


def test_closing_a_running_process_marks_it_killed_by_the_host(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time\nprint('up', flush=True)\ntime.sleep(60)"]
    with runner.QemuRun(argv, tmp_path / "log", timeout=120) as vm:
        vm.wait_for("up", timeout=60)
    assert vm.killed is True


class _FakeClient:
    def __init__(self) -> None:
        self.boots = 1

    def wait_up(self, timeout: float) -> dict:
        return {"booted": "0", "running": "0", "boots": self.boots}


def test_device_up_is_noted_once_per_boot(tmp_path: Path) -> None:
    session = scenarios.Session(image=None, work=tmp_path)  # type: ignore[arg-type]
    session.client = _FakeClient()  # type: ignore[assignment]
    session.wait_up()
    session.wait_up()  # the factory scenario and hard-reset wait again: nothing new to say
    assert [s.what for s in session.steps] == ["device up"]
    session.client.boots = 2  # type: ignore[union-attr]
    session.wait_up()
    assert [s.what for s in session.steps] == ["device up", "device up"]


# ------------------------------------------------------------------ initramfs compression


def test_lz4_initramfs_uses_the_legacy_frame_the_kernel_unpacks(tmp_path: Path) -> None:
    if not shutil.which("lz4") or not shutil.which("cpio"):
        pytest.skip("lz4 or cpio not installed (Debian packages lz4, cpio)")
    plan = initramfs.Plan()
    plan.generated["init"] = b"#!/bin/sh\n"
    plan.directories.add("dev")
    out = tmp_path / "initrd"
    initramfs.write(plan, out, "lz4")
    assert out.read_bytes()[:4] == bytes.fromhex("02214c18")  # legacy lz4 magic 0x184C2102
    raw = subprocess.run(["lz4", "-d", "-c", str(out)], capture_output=True, check=True).stdout
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=raw, capture_output=True).stdout
    assert b"init" in listing.split() and b"dev/urandom" in listing.split()
    initramfs.write(plan, out, "none")
    assert out.read_bytes()[:6] == b"070701"
    assert io.BytesIO(out.read_bytes()).read(6) == b"070701"


def test_status_probe_gives_up_on_a_forward_that_accepts_but_never_answers(monkeypatch) -> None:
    """QEMU's hostfwd accepts at once while the guest is still booting: the probe must give up
    after PROBE_TIMEOUT and let the caller poll again, not wait the client's long timeout."""
    import socket

    from pvreal.ctrl.client import CtrlError
    from pvreal.qemu import control

    monkeypatch.setattr(control, "PROBE_TIMEOUT", 0.2)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        client = control.TcpCtrlClient(silent.getsockname()[1], timeout=3600)
        with pytest.raises(CtrlError, match="timed out"):
            client.probe_status()
