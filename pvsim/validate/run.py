"""`pvsim validate` end to end: the real fleet, calibration from its timeline, pvsim with the same
schedule, the comparison. The real run's folder is temporary and removed afterwards; `keep` names
a folder that keeps its timelines and logs, also when the real run fails (a device that died
while booting is then explained by its own log)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pvsim.scenario import Scenario
from pvsim.validate import calibrate, compare, realrun, simrun, timeline
from shared.errors import PvError

TMP_PARENT = Path("/var/tmp")  # a block device, not tmpfs: storage speeds as a disk has them


def validate(scn: Scenario, devices: int, display: Any, keep: Path | None = None) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise PvError("pvsim validate runs a real fleet: it needs root (network namespaces, mounts, runc)")
    work = Path(tempfile.mkdtemp(prefix="pvsim-validate-", dir=TMP_PARENT if TMP_PARENT.is_dir() else None))
    try:
        try:
            real = realrun.run_real(scn, devices, work, display)
        except PvError as exc:
            # the message names a log in `work`, which is removed below
            if keep is None:
                note = "that folder is removed now: run with --keep DIR to keep the logs"
            else:
                _keep(work, keep)
                note = f"removed now; the logs are kept in {keep / 'logs'}"
            raise PvError(f"{exc.message} ({note})", source=exc.source, key=exc.key) from None
        figures = calibrate.fit(real)
        display.stage("pvsim: the same scenario, calibrated")
        changed = [r["changed_mb"] for r in real["releases"]]
        sim = simrun.run_sim(scn, devices, changed, figures)
        timeline.save(sim, work / "sim-timeline.json")
        result = compare.compare(real, sim)
        result["calibration"] = figures
        if keep is not None:
            _keep(work, keep)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _keep(work: Path, keep: Path) -> None:
    """The timelines, the plan, the real run's own log and the logs of its processes (whichever
    of them exist: a failed real run has no timeline)."""
    keep.mkdir(parents=True, exist_ok=True)
    for name in ("real-timeline.json", "sim-timeline.json", "plan.json", "real.log"):
        if (work / name).is_file():
            shutil.copy(work / name, keep / name)
    _keep_logs(work / "real", keep / "logs")


def _keep_logs(real: Path, dest: Path) -> None:
    """The real side's own logs (each daemon's, the Hub's, the relay's), to see why a device did
    what it did."""
    dest.mkdir(parents=True, exist_ok=True)
    for log in sorted(real.glob("fleet/devices/*/daemon.log")):
        shutil.copy(log, dest / f"{log.parent.name}.log")
    for name in ("hub.log", "relay.log"):
        if (real / "fleet" / name).is_file():
            shutil.copy(real / "fleet" / name, dest / name)
