"""End-to-end runs of the real device in QEMU: boot, push updates over pv-ctrl, follow progress.

A `Session` is one QEMU process on a copy of the image's device disk (factory revision 0), with
pv-ctrl forwarded to a loopback port and a QMP socket; it is always killed on exit. Scenarios
(`SCENARIOS`) drive it and record `Step`s (what was asked, what the device answered); the
console's boots (pvreal.qemu.timeline) complete the report that `pvreal qemu run` prints.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
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
from pvreal.qemu.resetpoints import (
    AFTER_COMMIT,
    AFTER_COMMIT_SPREAD,
    BEFORE_TRY,
    IN_TRY,
    check_point,
    commit_pattern,
    landing,
    plan_reset_anchors,
    reset_summary,
    try_pattern,
)
from shared.errors import PvError

CONSOLE_UP_TIMEOUT = 60.0  # s: pv-ctrl says booted before the containers run; the line follows
BOOT_TIMEOUT = 240.0  # one boot under a loaded TCG host can take a minute; several per update
# The run's QEMU timeout when none is given: a base for the boots and the other scenarios, and
# more per hard-reset point (an update, the reset, one or two boots: 30-150 s under TCG).
BASE_TIMEOUT = 900.0
SECONDS_PER_RESET_POINT = 180.0
# Console events `pvreal qemu run` shows under each boot as they happen.
LIVE_EVENTS = ("PVTWIN STATUS", "PVTWIN ENV", "PVTWIN DEVICE reboot", "PVTWIN DEVICE poweroff",
               "PVTWIN VERITY", "PVTWIN COMMIT")  # fmt: skip


def run_timeout(names: Sequence[str], points: int) -> float:
    """The QEMU timeout for running `names` in one VM (grows with hard-reset's points)."""
    extra = SECONDS_PER_RESET_POINT * (points + 1) if "hard-reset" in names else 0.0
    return BASE_TIMEOUT + extra


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
    live: bool = False  # print each boot as it happens (pvreal qemu run)
    icount: int | None = None  # the guest's clock counts instructions (runner.qemu_argv)
    resets: list[float] = field(default_factory=list)  # host resets, s since QEMU started
    reset_points: list[dict[str, Any]] = field(default_factory=list)  # hard-reset's points
    _t0: float = 0.0
    _up_noted: int = -1  # the boot count `device up` was last noted for
    _follower: timeline.Follower | None = None

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
                ctrl_port=port, icount=self.icount,
            )  # fmt: skip
            self._t0 = time.monotonic()
            with runner.QemuRun(argv, self.work / "console.log", timeout=self.timeout) as vm:
                self.vm = vm
                if self.live:
                    self._follower = timeline.Follower(self._print_boot)
                    vm.on_line.append(self._follower.feed)
                self.client = TcpCtrlClient(port, timeout=15)
                with QmpClient(qmp_path) as qmp:
                    self.qmp = qmp
                    yield self
            if self._follower is not None:  # QEMU is gone: say how the last boot ended
                self._follower.finish(killed=vm.killed)

    # ---------------------------------------------------------------- recording

    def note(self, what: str, **result: Any) -> Step:
        step = Step(round(time.monotonic() - self._t0, 1), what, result)
        self.steps.append(step)
        print(f"{step.t:7.1f}s {what} {result}", flush=True)
        return step

    def _print_boot(self, event: str, boot: timeline.Boot) -> None:
        """A boot as it happens (called from the console reader: one print per line)."""
        assert self.vm is not None
        at = f"{self.vm.elapsed():7.1f}s"
        if event == "booted":
            print(f"{at} {timeline.render_boot(boot).rsplit(' -> ', 1)[0]}", flush=True)
        elif event == "up":
            phases = ", ".join(f"{name} {sec:.1f}" for name, sec in boot.breakdown(short=True))
            print(f"{at} boot {boot.index}: daemon up {boot.up_seconds()} s after the boot "
                  f"started ({phases})", flush=True)  # fmt: skip
        elif event == "event" and boot.events[-1].startswith(LIVE_EVENTS):
            print(f"{at}     {boot.events[-1]}", flush=True)
        elif event == "ended":
            print(f"{at} boot {boot.index} ended: {boot.ended}", flush=True)

    def reset(self) -> None:
        """QMP system_reset, remembered so the timeline says the host did it."""
        assert self.qmp is not None and self.vm is not None
        self.resets.append(self.vm.elapsed())
        self.qmp.system_reset()
        if self._follower is not None:
            self._follower.host_reset(self.resets[-1])

    def boots(self) -> list[timeline.Boot]:
        assert self.vm is not None
        return timeline.boots(self.vm.lines, killed=self.vm.killed, resets=self.resets)

    def report(self) -> dict[str, Any]:
        return {
            "boots": [b.to_json() for b in self.boots()],
            "steps": [asdict(s) for s in self.steps],
        }

    # ---------------------------------------------------------------- device operations

    def wait_up(self, timeout: float = BOOT_TIMEOUT) -> dict[str, Any]:
        assert self.client is not None
        status = self.client.wait_up(timeout)
        if status.get("boots") != self._up_noted:  # once per boot, however many wait for it
            self._up_noted = status.get("boots", 0)
            self.note("device up", booted=status["booted"], running=status["running"])
            self._console_up()
        return status

    def _console_up(self, timeout: float = CONSOLE_UP_TIMEOUT) -> None:
        """Wait for this boot's `PVTWIN DEVICE up` line: pv-ctrl answers with a booted revision
        while the daemon still starts its containers (seconds under load; the line comes once
        they run), and a run that ends right after `device up` (the bench, `pvreal qemu run
        --image DIR`) would otherwise lose the breakdown's last phase."""
        if self.vm is None:  # no console to wait for (a session driven without QEMU)
            return
        lines = self.vm.lines
        grub = max((i for i, line in enumerate(lines) if "PVGRUB: up" in line.text), default=0)
        with contextlib.suppress(runner.QemuTimeout):
            self.vm.wait_for(r"PVTWIN DEVICE up", timeout=timeout, start=grub)

    def wait_idle(self, timeout: float = BOOT_TIMEOUT * 2) -> dict[str, Any]:
        """Until the device answers with no update in progress (reboots in between are fine)."""
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = self.client.probe_status()
                if status.get("booted") and status.get("update") is None:
                    return status
            except CtrlError:
                pass
            time.sleep(0.5)
        raise ScenarioFailed(f"the device was not idle within {timeout} s", source="status")

    def wait_container(self, name: str, status: str, timeout: float = BOOT_TIMEOUT) -> dict[str, Any]:
        """The device's status once container `name` reports `status` (or the last one seen when
        `timeout` passes first; the caller says what was wrong)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.status()
            if seen["containers"].get(name, {}).get("status") == status:
                return seen
            if time.monotonic() >= deadline:
                return seen
            time.sleep(0.5)

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
    # revision 0 can read DONE before its containers are up (the record survives from the
    # install): wait for the app to run rather than catch it starting on a loaded host
    status = s.wait_container("app", "STARTED")
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
    s.wait_idle()
    status = s.wait_container("app", "STARTED")  # the old revision's app, started again
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
    """6. QMP system_reset at seeded moments of reboot updates: every point ends on the old or
    the new committed revision, booted and idle (never unbootable); a reset after the commit
    keeps the new one.

    One update runs uncut first to measure, from the console, how long its stages take on this
    host (TCG speed varies several times with load): LOCAL_RUN → GRUB's first attempt of the try
    (the device's shutdown and GRUB), that first attempt → the commit. Each point then has an
    anchor (plan_reset_anchors) and a random moment within it: before the try (in the first half
    of the time from LOCAL_RUN to GRUB's latch), in the try (after GRUB latched it, before the commit) or after the
    commit (0-2 s after its grubenv write). Where it really landed is read back from the console
    at the reset (`landing`)."""
    assert s.revisions is not None and s.client is not None and s.vm is not None
    rng = random.Random(seed)
    s.wait_up()
    base = "locals/reset-baseline"
    s.client.push(base, s.revisions.bsp(s.running_state(), "pvtwin.point=b"), s.revisions.objects)
    mark, started = len(s.vm.lines), s.vm.elapsed()
    s.note(f"LOCAL_RUN {base}", status=s.client.command_retry("LOCAL_RUN", base).status)
    s.vm.wait_for(try_pattern(base), timeout=BOOT_TIMEOUT, start=mark)
    try_t = s.vm.lines[s.vm.last_index].t
    s.vm.wait_for(commit_pattern(base), timeout=BOOT_TIMEOUT * 2, start=s.vm.last_index)
    commit_t = s.vm.lines[s.vm.last_index].t
    s.expect_status(base, ("DONE",))
    windows = {
        # the first half: a point no faster than the baseline still lands before GRUB's latch
        BEFORE_TRY: max((try_t - started) / 2, 0.3),
        IN_TRY: max(commit_t - try_t, 0.5),
        AFTER_COMMIT: AFTER_COMMIT_SPREAD,
    }
    s.note("baseline update", to_try=round(try_t - started, 1),
           try_to_commit=round(commit_t - try_t, 1))  # fmt: skip
    for point, anchor in enumerate(plan_reset_anchors(points, seed)):
        old = s.wait_idle()["pv_rev"]
        rev = f"locals/reset-{seed}-{point}"
        state = s.revisions.bsp(s.running_state(), cmdline=f"pvtwin.point={point}")
        s.client.push(rev, state, s.revisions.objects)
        delay = round(rng.uniform(0.0, windows[anchor]), 1)
        mark = len(s.vm.lines)
        answer = s.client.command_retry("LOCAL_RUN", rev)
        s.note(f"LOCAL_RUN {rev}", status=answer.status, anchor=anchor, reset_after=delay)
        if anchor == IN_TRY:
            s.vm.wait_for(try_pattern(rev), timeout=BOOT_TIMEOUT * 2, start=mark)
        elif anchor == AFTER_COMMIT:
            s.vm.wait_for(commit_pattern(rev), timeout=BOOT_TIMEOUT * 2, start=mark)
        time.sleep(delay)
        s.reset()
        where = landing([line.text for line in s.vm.lines[mark:]], rev)
        s.note("QMP system_reset", point=point, landed=where)
        status = s.wait_idle()
        committed = status["pv_rev"]
        progress = s.client.progress(rev) or {}
        result = "new" if committed == rev else "old"
        s.reset_points.append({"point": point, "anchor": anchor, "delay": delay,
                               "landed": where, "committed": result})  # fmt: skip
        s.note(f"point {point} settled", landed=where, committed=result, running=status["running"],
               progress=progress.get("status"), msg=progress.get("status-msg"))  # fmt: skip
        wrong = check_point(where, committed, old, rev)
        if wrong or status["running"] != committed:
            raise ScenarioFailed(f"reset point {point} ({where}, +{delay} s): "
                                 f"{wrong or 'runs another revision'}: {status}", source=rev)  # fmt: skip
    s.note("reset points", **reset_summary(s.reset_points))


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
