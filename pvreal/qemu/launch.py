"""Boot a built image and report what happened (`pvreal qemu run`).

Two runs: the device run boots `device.img` (a copy: the image stays factory-fresh) with the real
daemon as PID 1, pushes updates over pv-ctrl and runs end-to-end scenarios (pvreal.qemu.scenarios);
the harness run boots `storage.img` with the boot chain test harness until it powers off.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvreal.ctrl.client import FINAL
from pvreal.qemu import resetpoints, runner, scenarios, timeline
from pvreal.qemu.build import Image
from pvreal.qemu.factory import Revisions
from pvreal.rev.build import load_state
from shared.errors import PvError


@dataclass(frozen=True)
class HarnessRun:
    boots: list[timeline.Boot]
    powered_off: bool
    timed_out: bool


def run_harness(image: Image, log: Path, *, timeout: float, watchdog: bool) -> HarnessRun:
    with tempfile.TemporaryDirectory(prefix="pvtwin-qmp-") as scratch:
        argv = runner.qemu_argv(
            image.grub_lnx,
            image.disk,
            watchdog=watchdog,
            qmp_socket=Path(scratch) / "qmp.sock",
        )
        with runner.QemuRun(argv, log, timeout=timeout) as vm:
            try:
                code: int | None = vm.wait_exit(timeout=timeout + 5)
            except runner.QemuTimeout:
                code = None
    boots = timeline.boots(vm.lines, killed=vm.killed)
    return HarnessRun(boots, code == 0 and not vm.timed_out, vm.timed_out)


def run_device(
    image: Image,
    log: Path,
    *,
    updates: Sequence[Path] = (),
    scenario_names: Sequence[str] = (),
    points: int = 5,
    seed: int = 1,
    timeout: float | None = None,
    watchdog: bool = False,
    live: bool = True,
    icount: int | None = None,
) -> tuple[dict[str, Any], str | None]:
    """The session's report (boots, steps, reset points) and the failure that ended it, if any;
    the serial console is copied to `log` either way. `timeout` None: grows with hard-reset's
    points (scenarios.run_timeout). `live`: print each boot and step as it happens."""
    if not image.device_disk.exists():
        raise PvError("no device.img; rebuild with `pvreal qemu build`", source=str(image.out))
    if timeout is None:
        timeout = scenarios.run_timeout(scenario_names, points)
    with tempfile.TemporaryDirectory(prefix="pvtwin-qemu-run-") as scratch:
        session = scenarios.Session(
            image, Path(scratch), timeout=timeout, live=live, icount=icount,
            watchdog=watchdog or any(n in scenarios.NEEDS_WATCHDOG for n in scenario_names),
        )  # fmt: skip
        failure: str | None = None
        # TCG time scales with the host's load: every figure of the run is reported beside it
        load = {"start": round(os.getloadavg()[0], 2)}
        try:
            with session.running():
                session.wait_up()
                push_updates(session, image, updates)
                for name in scenario_names:
                    run = scenarios.SCENARIOS[name]
                    if name == "hard-reset":
                        run(session, points=points, seed=seed)
                    else:
                        run(session)
                    session.note(f"scenario {name} passed")
                status = session.wait_idle()
                session.note("final", running=status["running"], pv_rev=status["pv_rev"])
        except PvError as error:
            failure = str(error)
        finally:
            # after QEMU is gone: the last boot is then labelled as killed by the host
            report = session.report() if session.vm is not None else {"boots": [], "steps": []}
            report["load"] = {**load, "end": round(os.getloadavg()[0], 2)}
            report["timed_out"] = bool(session.vm and session.vm.timed_out)
            report["timeout"] = timeout
            if session.reset_points:
                report["reset_points"] = session.reset_points
                report["reset_summary"] = resetpoints.reset_summary(session.reset_points)
            if (Path(scratch) / "console.log").exists():
                shutil.copyfile(Path(scratch) / "console.log", log)
    return report, failure


def push_updates(session: scenarios.Session, image: Image, sources: Sequence[Path]) -> None:
    """Each state in turn (objects in objects/ beside it) with LOCAL_RUN, until it ends: UPDATED
    for one that needed no reboot, DONE for one that did, or a failure."""
    for source in sources:
        session.revisions = Revisions(source.resolve().parent, image.kernel, image.initrd)
        rev = f"locals/{source.stem}"
        session.push_and_run(rev, load_state(source))
        session.wait_status(rev, FINAL)
        session.wait_idle()
