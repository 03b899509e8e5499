"""End-to-end runs of the real device in QEMU: boot, push updates over pv-ctrl, follow progress.

A `Session` is one QEMU process on a copy of the image's device disk (factory revision 0), with
pv-ctrl forwarded to a loopback port and a QMP socket; it is always killed on exit. Scenarios
(`SCENARIOS`) drive it and record `Step`s (what was asked, what the device answered); the
console's boots (pvreal.qemu.timeline) complete the report that `pvreal qemu run` prints.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pvreal.ctrl.client import FAILED, CtrlError
from pvreal.qemu import disk, runner, timeline
from pvreal.qemu.build import Image
from pvreal.qemu.control import TcpCtrlClient, free_port
from pvreal.qemu.factory import CRASHING_INIT, SERVICE_INIT, Revisions
from pvreal.qemu.qmp import QmpClient
from shared.errors import PvError

BOOT_TIMEOUT = 240.0  # one boot under a loaded TCG host can take a minute; several per update


class ScenarioFailed(PvError):
    """The device did not do what the scenario expects (the message says what it did)."""


@dataclass
class Step:
    t: float  # seconds since QEMU started
    what: str
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class Session:
    image: Image
    work: Path
    timeout: float = 900.0
    watchdog: bool = False
    steps: list[Step] = field(default_factory=list)
    vm: runner.QemuRun | None = None
    client: TcpCtrlClient | None = None
    qmp: QmpClient | None = None
    revisions: Revisions | None = None
    disk: Path | None = None
    _t0: float = 0.0

    @contextmanager
    def running(self) -> Iterator[Session]:
        self.work.mkdir(parents=True, exist_ok=True)
        self.disk = self.work / "device.img"
        shutil.copyfile(self.image.device_disk, self.disk)
        self.revisions = Revisions(self.work / "revs", self.image.kernel, self.image.initrd)
        port = free_port()
        # AF_UNIX paths stop at 107 bytes: the QMP socket lives in a short temporary folder
        with tempfile.TemporaryDirectory(prefix="pvq-") as short:
            qmp_path = Path(short) / "qmp"
            argv = runner.qemu_argv(
                self.image.grub_lnx, self.disk, watchdog=self.watchdog, qmp_socket=qmp_path,
                ctrl_port=port,
            )  # fmt: skip
            self._t0 = time.monotonic()
            with runner.QemuRun(argv, self.work / "console.log", timeout=self.timeout) as vm:
                self.vm = vm
                self.client = TcpCtrlClient(port, timeout=15)
                with QmpClient(qmp_path) as qmp:
                    self.qmp = qmp
                    yield self

    # ---------------------------------------------------------------- recording

    def note(self, what: str, **result: Any) -> Step:
        step = Step(round(time.monotonic() - self._t0, 1), what, result)
        self.steps.append(step)
        print(f"{step.t:7.1f}s {what} {result}", flush=True)
        return step

    def boots(self) -> list[timeline.Boot]:
        assert self.vm is not None
        return timeline.boots(self.vm.lines)

    def report(self) -> dict[str, Any]:
        return {
            "boots": [b.to_json() for b in self.boots()],
            "steps": [asdict(s) for s in self.steps],
        }

    # ---------------------------------------------------------------- device operations

    def wait_up(self, timeout: float = BOOT_TIMEOUT) -> dict[str, Any]:
        assert self.client is not None
        status = self.client.wait_up(timeout)
        self.note("device up", booted=status["booted"], running=status["running"])
        return status

    def wait_idle(self, timeout: float = BOOT_TIMEOUT * 2) -> dict[str, Any]:
        """Until the device answers with no update in progress (reboots in between are fine)."""
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = self.client.status()
                if status.get("booted") and status.get("update") is None:
                    return status
            except CtrlError:
                pass
            time.sleep(1.0)
        raise ScenarioFailed(f"the device was not idle within {timeout} s", source="status")

    def push_and_run(self, rev: str, state: dict[str, Any], op: str = "LOCAL_RUN") -> None:
        assert self.client is not None and self.revisions is not None
        self.client.push(rev, state, self.revisions.objects)
        answer = self.client.command_retry(op, rev)
        self.note(f"{op} {rev}", status=answer.status)
        if not answer.ok:
            raise ScenarioFailed(f"{op} {rev}: {answer.status} {answer.error}", source=rev)

    def wait_status(
        self, rev: str, until: tuple[str, ...], timeout: float = BOOT_TIMEOUT * 2
    ) -> dict[str, Any]:
        assert self.client is not None
        # a failure or DONE ends the wait too (an unexpected one fails at once); UPDATED only
        # when asked for, since a try-boot after REBOOT_DEVICE starts from UPDATED
        final = (*until, *FAILED, "DONE")
        record = self.client.wait(rev, until=final, timeout=timeout, poll=1.0) or {}
        self.note(f"progress {rev}", **record)
        return record

    def expect_status(self, rev: str, until: tuple[str, ...], **kw: Any) -> dict[str, Any]:
        record = self.wait_status(rev, until, **kw)
        if record.get("status") not in until:
            raise ScenarioFailed(f"{rev} ended {record}, expected one of {until}", source=rev)
        return record

    def status(self) -> dict[str, Any]:
        assert self.client is not None
        return self.client.status()

    def running_state(self) -> dict[str, Any]:
        """The state JSON of the revision the device runs (the base of the next update)."""
        assert self.client is not None
        rev = self.wait_idle()["running"]
        return self.client.checked("GET", f"/steps/{rev}").json()


# -------------------------------------------------------------------------------- scenarios


def factory(s: Session) -> None:
    """1. factory boot → containers running → revision 0 DONE."""
    s.wait_up()
    s.expect_status("0", ("DONE",))
    status = s.status()
    app = status["containers"].get("app", {})
    if status["running"] != "0" or app.get("status") != "STARTED":
        raise ScenarioFailed(f"factory boot: {status}", source="0")
    if not app.get("netns") or not app.get("address"):  # veth to the device's bridge (pyroute2)
        raise ScenarioFailed(f"factory boot: app has no network namespace of its own: {app}", source="0")
    s.note("app network", netns=app["netns"], address=app["address"])


def app_update(s: Session, rev: str = "locals/app-2") -> None:
    """2. container-only update → UPDATED without reboot; REBOOT_DEVICE → try-boot → DONE."""
    assert s.revisions is not None
    base = s.status()
    state = s.revisions.container(s.running_state(), init_script=SERVICE_INIT + "# v2\n")
    s.push_and_run(rev, state)
    s.expect_status(rev, ("UPDATED",))
    after = s.status()
    if after["boots"] != base["boots"] or after["running"] != rev:
        raise ScenarioFailed(f"UPDATED needed a reboot or runs something else: {after}", source=rev)
    answer = s.client.command_retry("REBOOT_DEVICE")  # type: ignore[union-attr]
    s.note("REBOOT_DEVICE", status=answer.status)
    s.expect_status(rev, ("DONE",))
    status = s.wait_idle()
    if status["booted"] != rev or status["pv_rev"] != rev:
        raise ScenarioFailed(f"after the try-boot: {status}", source=rev)


def bsp_cmdline(s: Session, rev: str = "locals/bsp-2", mark: str = "pvtwin.mark=bsp2") -> None:
    """3. BSP update with another kernel command line → real reboot → DONE, new cmdline runs."""
    assert s.revisions is not None
    state = s.revisions.bsp(s.running_state(), cmdline=mark)
    s.push_and_run(rev, state)
    s.expect_status(rev, ("DONE",))
    status = s.wait_idle()
    booted = [b for b in s.boots() if b.pv_rev is not None][-1]
    cmdline = next(e for e in reversed(s.vm.lines) if "PVTWIN BOOT" in e.text).text  # type: ignore[union-attr]
    s.note("running cmdline", line=cmdline[cmdline.index("cmdline=") :])
    if status["booted"] != rev or booted.pv_rev != rev or mark not in cmdline:
        raise ScenarioFailed(f"BSP update: {status}; last boot line {cmdline!r}", source=rev)


def bad_app(s: Session, rev: str = "locals/bad-app") -> None:
    """4. an app update whose container crashes → ERROR → the old revision runs again."""
    assert s.revisions is not None
    old = s.wait_idle()["running"]
    state = s.revisions.container(s.running_state(), init_script=CRASHING_INIT)
    s.push_and_run(rev, state)
    s.expect_status(rev, FAILED)
    status = s.wait_idle()
    s.note("after the failed update", running=status["running"], pv_rev=status["pv_rev"])
    if status["running"] != old or status["containers"].get("app", {}).get("status") != "STARTED":
        raise ScenarioFailed(f"after the bad update the device runs {status}", source=rev)


def _try_that_dies(s: Session, rev: str, harness: str) -> None:
    assert s.revisions is not None
    old = s.wait_idle()["pv_rev"]  # a rollback boots the committed revision
    state = s.revisions.bsp(s.running_state(), cmdline=f"pvtwin.harness={harness}")
    s.push_and_run(rev, state)
    record = s.expect_status(rev, ("ERROR",))
    status = s.wait_idle()
    if status["running"] != old or record.get("status-msg") != "Unexpected rollback":
        raise ScenarioFailed(f"{harness}: {record}; device {status}", source=rev)
    if status["pv_try"]:
        raise ScenarioFailed(f"pv_try not cleared after the rollback: {status}", source=rev)


def panic(s: Session) -> None:
    """5a. a revision whose init dies (kernel panic, panic=2) → reset → GRUB boots the old one."""
    _try_that_dies(s, "locals/panic", "panic")


def hang(s: Session) -> None:
    """5b. a revision whose init hangs with the i6300esb watchdog armed → reset → rollback."""
    _try_that_dies(s, "locals/hang", "watchdog:2,hang")


def hard_reset(s: Session, points: int = 5, seed: int = 1) -> None:
    """6. QMP system_reset at seeded random moments of a reboot update: every run ends on the old
    or the new committed revision, booted and idle (never unbootable).

    One update runs uncut first to measure how long LOCAL_RUN → DONE takes on this host (TCG
    speed varies several times with load); the reset moments are drawn from 0 to 1.1 times that,
    so they fall before the reboot, in GRUB, in the kernel, in the daemon's start, in TESTING and
    after the commit."""
    assert s.revisions is not None and s.qmp is not None and s.client is not None
    rng = random.Random(seed)
    s.wait_up()
    started = time.monotonic()
    s.push_and_run("locals/reset-baseline", s.revisions.bsp(s.running_state(), "pvtwin.point=b"))
    s.expect_status("locals/reset-baseline", ("DONE",))
    window = (time.monotonic() - started) * 1.1
    s.note("baseline update", seconds=round(window / 1.1, 1))
    for point in range(points):
        old = s.wait_idle()
        rev = f"locals/reset-{seed}-{point}"
        state = s.revisions.bsp(s.running_state(), cmdline=f"pvtwin.point={point}")
        s.client.push(rev, state, s.revisions.objects)
        delay = round(rng.uniform(0.0, window), 1)
        answer = s.client.command_retry("LOCAL_RUN", rev)
        s.note(f"LOCAL_RUN {rev}", status=answer.status, reset_after=delay)
        time.sleep(delay)
        s.qmp.system_reset()
        s.note("QMP system_reset", point=point)
        status = s.wait_idle()
        committed = status["pv_rev"]
        progress = s.client.progress(rev) or {}
        s.note(f"point {point} settled", running=status["running"], pv_rev=committed,
               progress=progress.get("status"), msg=progress.get("status-msg"))  # fmt: skip
        if committed not in (old["pv_rev"], rev) or status["running"] != committed:
            raise ScenarioFailed(f"reset point {point} ({delay} s): {status}", source=rev)


def verity(s: Session) -> None:
    """7. dm-verity: a container whose root volume is `dm:` runs from a real dm-verity device
    (container-only update → UPDATED); then a reboot update whose image does not match its hash
    tree: the container fails in the try-boot → ERROR → rollback to the revision before."""
    assert s.revisions is not None and s.vm is not None
    good = s.revisions.container(s.running_state(), init_script=SERVICE_INIT, verity=True)
    s.push_and_run("locals/verity", good)
    s.expect_status("locals/verity", ("UPDATED", "DONE"))
    s.vm.wait_for(r"PVTWIN VERITY opened", timeout=30)
    if s.status()["containers"].get("app", {}).get("status") != "STARTED":
        raise ScenarioFailed(f"verity container not running: {s.status()}", source="locals/verity")
    old = s.status()["pv_rev"]
    # Tampered: another squashfs (a valid object of its own) under the good hash tree and root
    # hash: dm-verity refuses its blocks. A BSP change makes it a reboot update (a try-boot).
    other = s.revisions.container(s.running_state(), init_script=SERVICE_INIT + "# tampered\n",
                                  verity=True)  # fmt: skip
    tampered = s.revisions.bsp(dict(good), cmdline="pvtwin.mark=tampered")
    tampered["app/root.squashfs"] = other["app/root.squashfs"]
    s.push_and_run("locals/tampered", tampered)
    record = s.expect_status("locals/tampered", FAILED)
    status = s.wait_idle()
    s.note("after the tampered update", running=status["running"], pv_rev=status["pv_rev"],
           msg=record.get("status-msg"))  # fmt: skip
    tried = [b for b in s.boots() if b.pv_rev == "locals/tampered" and b.pv_try == b.pv_rev]
    if not tried or status["pv_rev"] != old or status["running"] != old:
        raise ScenarioFailed(f"tampered update: {record}; device {status}", source="tampered")


SCENARIOS: dict[str, Callable[..., None]] = {
    "verity": verity,
    "factory": factory,
    "app-update": app_update,
    "bsp-cmdline": bsp_cmdline,
    "bad-app": bad_app,
    "panic": panic,
    "hang": hang,
    "hard-reset": hard_reset,
}
NEEDS_WATCHDOG = {"hang"}


def read_grubenv(s: Session) -> dict[str, str]:
    """The grubenv on the disk (only once QEMU has exited)."""
    assert s.disk is not None
    return disk.read_env(s.disk)
