"""End to end: the real daemon as PID 1 in QEMU/TCG behind the real GRUB latch.

Each test boots `device.img` (factory revision 0 made by `pvreal rev add-bsp` / `add-container`
and `pvreal device init`), pushes updates through pv-ctrl over a loopback port forwarded into
the guest, and follows them through real reboots, kernel panics, watchdog resets and QMP
`system_reset`s (pvreal.qemu.scenarios). Scenarios are chained in one VM where one leaves the
device as the next one needs it: a boot costs 10-20 s under TCG (more on a loaded host).

Two xdist groups: the chained scenarios in "qemu-e2e", the hard-reset run in "qemu" after
tests/test_qemu_boot.py's harness boots, so each of the two workers runs one TCG guest at a time.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from pvreal.qemu import build, resetpoints, scenarios
from pvreal.tools import ToolError

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.xdist_group("qemu-e2e")]

SESSION_TIMEOUT = 1200.0  # QEMU is killed after this, whatever happens


def _missing() -> str | None:
    from test_qemu_boot import _missing as boot_chain_missing

    reason = boot_chain_missing()
    if reason:
        return reason
    if not shutil.which("mksquashfs"):
        return "mksquashfs not installed (Debian package squashfs-tools)"
    if not shutil.which("veritysetup"):
        return "veritysetup not installed (Debian package cryptsetup-bin): dm-verity scenario"
    if not shutil.which("runc"):
        return "runc not installed (the guest's container runtime comes from the host)"
    return None


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> build.Image:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("qemu-e2e-image")
    snapshot = tmp_path_factory.mktemp("qemu-e2e-src")
    for package in ("shared", "pvreal"):
        shutil.copytree(
            build.REPO / package, snapshot / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    try:
        return build.build(out, repo=snapshot)
    except ToolError as error:
        if "apt-get" in str(error) or "apt-cache" in str(error):
            pytest.skip(f"the Debian kernel package cannot be had: {error}")
        raise


def _run(image: build.Image, work: Path, names: list[str], **kw: object) -> scenarios.Session:
    session = scenarios.Session(
        image, work, timeout=SESSION_TIMEOUT, watchdog=any(n in scenarios.NEEDS_WATCHDOG for n in names)
    )
    started = time.monotonic()
    with session.running():
        for name in names:
            t = time.monotonic()
            try:
                scenarios.SCENARIOS[name](session, **kw)
            except Exception:
                print(session.vm.tail(60) if session.vm else "")
                raise
            print(f"scenario {name}: {time.monotonic() - t:.1f} s")
    print(f"session: {time.monotonic() - started:.1f} s, {len(session.boots())} boots")
    return session


def test_factory_app_update_bad_app_and_bsp_cmdline(image: build.Image, tmp_path: Path) -> None:
    """Scenarios 1, 2, 4 and 3 in one VM (each asserts inside, see pvreal.qemu.scenarios)."""
    session = _run(image, tmp_path, ["factory", "app-update", "bad-app", "bsp-cmdline"])
    boots = [b for b in session.boots() if b.pv_rev is not None]
    # factory; try-boot of app-2 (REBOOT_DEVICE); bad-app (non-reboot) may reboot once to go
    # back; the BSP try-boot: the last boot runs the BSP revision with its own command line
    assert boots[0].pv_rev == "0" and boots[-1].pv_rev == "locals/bsp-2"
    assert any(b.pv_rev == "locals/app-2" and b.pv_try == "locals/app-2" for b in boots)
    env = scenarios.read_grubenv(session)
    assert env == {"pv_rev": "locals/bsp-2"}, env  # committed; pv_try and pv_trying gone


def test_panic_hang_and_dm_verity_roll_back(image: build.Image, tmp_path: Path) -> None:
    """Scenario 5: a try whose init panics (panic=2), then one that hangs (i6300esb reset);
    scenario 7: a dm-verity container runs from /dev/mapper, a tampered one fails its try."""
    session = _run(image, tmp_path, ["factory", "panic", "hang", "verity"])
    boots = [b for b in session.boots() if b.pv_rev is not None]
    tries = [b for b in boots if b.pv_try and b.pv_rev == b.pv_try]
    assert [b.pv_rev for b in tries] == ["locals/panic", "locals/hang", "locals/tampered"]
    assert tries[0].ended == "panic" and tries[1].ended == "hang"
    rollbacks = [g for b in session.boots() for g in b.grub if "already attempted" in g]
    assert len(rollbacks) == 3, rollbacks
    lines = [line.text for line in session.vm.lines]  # type: ignore[union-attr]
    assert any("PVTWIN VERITY opened app/root.squashfs as /dev/mapper/" in t for t in lines)
    assert any("device-mapper: verity" in t for t in lines)  # the kernel's dm-verity target
    assert scenarios.read_grubenv(session) == {"pv_rev": "0"}


@pytest.mark.xdist_group("qemu")  # beside the harness boots: balances the two workers
def test_hard_reset_at_random_points_of_a_reboot_update(
    image: build.Image, tmp_path: Path
) -> None:
    """Scenario 6: QMP system_reset at 5 seeded random moments; every point ends on the old or
    the new revision, committed, booted and idle (asserted per point in the scenario)."""
    session = _run(image, tmp_path, ["hard-reset"], points=5, seed=7)
    settled = [s for s in session.steps if s.what.startswith("point ")]
    assert len(settled) == 5
    # both branches of the update were cut: before GRUB latched the try, and after the commit
    # (which must have kept the new revision: checked per point in the scenario)
    print(resetpoints.reset_summary(session.reset_points))
    assert {p["anchor"] for p in session.reset_points} == set(resetpoints.RESET_ANCHORS)
    landed = [p["landed"] for p in session.reset_points]
    assert resetpoints.AFTER_COMMIT in landed
    assert any(p["committed"] == "new" for p in session.reset_points)
    env = scenarios.read_grubenv(session)
    assert set(env) <= {"pv_rev", "pv_try"} and "pv_trying" not in env, env
