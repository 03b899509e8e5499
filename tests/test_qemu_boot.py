"""Real boots: QEMU/TCG, the real GRUB latch (grub.lnx), Python as PID 1, a persistent disk.

Every guest here runs the boot chain test harness (trails/<rev>/.pv/harness.json), so these tests
keep testing the boot chain after pvreal.device lands. Boots that the real daemon now exercises
end to end (revision 0, commit, kernel panic and watchdog rollbacks) moved to
tests/test_qemu_e2e.py, which runs them with the daemon instead of the harness. All run in one xdist group: one build,
and no two TCG guests fighting for the same two cores.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from pvreal.qemu import build, disk, grub, runner, timeline
from pvreal.qemu.qmp import QmpClient
from pvreal.tools import ToolError

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.xdist_group("qemu")]

# Generous: a boot is ~4-10 s on an idle 2-core host, several times that on a busy one.
RUN_TIMEOUT = 300.0


def _missing() -> str | None:
    if not runner.available():
        return "qemu-system-x86_64 not installed (Debian package qemu-system-x86)"
    if not grub.available():
        return (
            "grub-mkimage or /usr/lib/grub/i386-pc/lnxboot.img missing (grub-common, grub-pc-bin)"
        )
    for tool, package in (
        ("busybox", "busybox-static"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
    ):
        if not shutil.which(tool):
            return f"{tool} not installed (Debian package {package})"
    if not shutil.which("apt-get"):
        return "apt-get not available to download the Debian kernel package"
    return None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[build.Image, build.Image, float]:
    """Two builds into the same folder: (first, second, seconds of the first)."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("qemu-image")
    # A snapshot of the sources: the cache-hit check must not depend on edits made meanwhile.
    snapshot = tmp_path_factory.mktemp("qemu-src")
    for package in ("shared", "pvreal"):
        shutil.copytree(
            build.REPO / package, snapshot / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    started = time.monotonic()
    try:
        first = build.build(out, repo=snapshot)
    except ToolError as error:
        if "apt-get" in str(error) or "apt-cache" in str(error):
            pytest.skip(f"the Debian kernel package cannot be had: {error}")
        raise
    seconds = time.monotonic() - started
    second = build.build(out, repo=snapshot)
    return first, second, seconds


@pytest.fixture
def image(built: tuple[build.Image, build.Image, float]) -> build.Image:
    return built[1]


def _boot(
    image: build.Image, storage: Path, log: Path, **options: object
) -> tuple[runner.QemuRun, list[timeline.Boot]]:
    """Boot until the guest powers off; fails (with the console tail) on timeout."""
    argv = runner.qemu_argv(image.grub_lnx, storage, **options)  # type: ignore[arg-type]
    with runner.QemuRun(argv, log, timeout=RUN_TIMEOUT) as vm:
        code = vm.wait_exit(timeout=RUN_TIMEOUT + 10)
    assert code == 0 and not vm.timed_out, vm.tail()
    return vm, timeline.boots(vm.lines)


def test_build_produces_every_artifact_and_a_second_build_is_a_cache_hit(built) -> None:
    first, second, seconds = built
    for artifact in ("kernel", "initrd", "grub", "disk"):
        assert (
            Path(second.artifacts[artifact].path).stat().st_size == second.artifacts[artifact].size
        )
        # (run while someone edits pvreal/, the initrd would rightly be rebuilt)
        assert second.artifacts[artifact].source == "cache hit", second.artifacts[artifact]
    assert first.artifacts["kernel"].size > 4_000_000  # a real vmlinuz
    assert first.artifacts["grub"].size > 100_000  # lnxboot + core with modules and the latch
    assert 5_000_000 < first.artifacts["initrd"].size < 60_000_000
    assert disk.read_env(second.disk) == {"pv_rev": "0"}
    assert (
        disk.read_file(second.disk, "trails/0/.pv/pv-kernel.img")[:4096]
        == first.kernel.read_bytes()[:4096]
    )
    print(
        f"first build {seconds:.1f} s: "
        + ", ".join(f"{a.name} {a.source} {a.seconds}s" for a in first.artifacts.values())
    )


def test_latch_tries_once_then_falls_back_after_a_reboot(
    image: build.Image, tmp_path: Path
) -> None:
    storage = build.make_storage_disk(
        image,
        tmp_path / "s.img",
        revisions=("0", "1"),
        env={"pv_rev": "0", "pv_try": "1"},
        harness={"1": {"try": "reboot"}, "0": {"boot": "poweroff"}},
    )
    vm, boots = _boot(image, storage, tmp_path / "console.log")
    assert [(b.pv_rev, b.pv_try, b.ended) for b in boots] == [
        ("1", "1", "reboot"),
        ("0", "1", "poweroff"),
    ]
    assert "first attempt of 1" in boots[0].grub
    # GRUB saved pv_trying=1 before booting the try: the guest read it back from the disk ...
    assert any("env=[pv_rev=0 pv_try=1 pv_trying=1]" in e for e in boots[0].events), boots[0].events
    # ... and the next GRUB saw it and rolled back, deleting it again.
    assert "env pv_rev=[0] pv_try=[1] pv_trying=[1]" in boots[1].grub
    assert "try of 1 already attempted, rollback to 0" in boots[1].grub
    assert disk.read_env(storage) == {"pv_rev": "0", "pv_try": "1"}
    disk.fsck(storage)


def test_qmp_system_reset_mid_boot_still_boots_a_valid_revision(
    image: build.Image, tmp_path: Path
) -> None:
    storage = build.make_storage_disk(
        image,
        tmp_path / "s.img",
        revisions=("0", "1"),
        env={"pv_rev": "0", "pv_try": "1"},
        harness={"1": {"try": "poweroff"}, "0": {"boot": "poweroff"}},
    )
    socket_path = tmp_path / "qmp.sock"
    argv = runner.qemu_argv(image.grub_lnx, storage, qmp_socket=socket_path)
    with (
        runner.QemuRun(argv, tmp_path / "console.log", timeout=RUN_TIMEOUT) as vm,
        QmpClient(socket_path) as qmp,
    ):
        assert qmp.query_status()["status"] == "running"
        vm.wait_for(r"PVGRUB: kernel loaded", timeout=RUN_TIMEOUT)  # GRUB has latched the try
        qmp.system_reset()
        code = vm.wait_exit(timeout=RUN_TIMEOUT)
    assert code == 0, vm.tail()
    boots = timeline.boots(vm.lines)
    assert boots[0].pv_rev is None and boots[0].ended == "reset"  # cut before PID 1
    assert [(b.pv_rev, b.ended) for b in boots[1:]] == [("0", "poweroff")]
    assert disk.read_env(storage) == {"pv_rev": "0", "pv_try": "1"}


def test_save_env_failure_boots_the_committed_revision(image: build.Image, tmp_path: Path) -> None:
    """A write-protected disk: GRUB cannot record the try, so it must not boot it (docs/qemu.md)."""
    storage = build.make_storage_disk(
        image,
        tmp_path / "s.img",
        revisions=("0", "1"),
        env={"pv_rev": "0", "pv_try": "1"},
        harness={"1": {"try": "poweroff"}, "0": {"boot": "poweroff"}},
    )
    vm, boots = _boot(image, storage, tmp_path / "console.log", read_only=True)
    assert [(b.pv_rev, b.pv_try, b.ended) for b in boots] == [("0", "1", "poweroff")]
    assert any(g.startswith("save_env FAILED, the try cannot be latched") for g in boots[0].grub)
    assert disk.read_env(storage) == {"pv_rev": "0", "pv_try": "1"}  # nothing was written
