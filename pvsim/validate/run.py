"""`pvsim validate` end to end: the real fleet, calibration from its timeline, pvsim with the same
schedule, the comparison. The real run's folder is temporary and removed afterwards unless
`keep` names one to keep it in (its timelines and the Hub database then stay there)."""

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
        real = realrun.run_real(scn, devices, work, display)
        figures = calibrate.fit(real)
        display.stage("pvsim: the same scenario, calibrated")
        changed = [r["changed_mb"] for r in real["releases"]]
        sim = simrun.run_sim(scn, devices, changed, figures)
        timeline.save(sim, work / "sim-timeline.json")
        result = compare.compare(real, sim)
        result["calibration"] = figures
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("real-timeline.json", "sim-timeline.json", "plan.json", "real.log"):
                shutil.copy(work / name, keep / name)
            _keep_logs(work / "real", keep / "logs")
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _keep_logs(real: Path, dest: Path) -> None:
    """The real side's own logs (each daemon's, the Hub's, the relay's), to see why a device did
    what it did."""
    dest.mkdir(parents=True, exist_ok=True)
    for log in sorted(real.glob("fleet/devices/*/daemon.log")):
        shutil.copy(log, dest / f"{log.parent.name}.log")
    for name in ("hub.log", "relay.log"):
        if (real / "fleet" / name).is_file():
            shutil.copy(real / "fleet" / name, dest / name)
