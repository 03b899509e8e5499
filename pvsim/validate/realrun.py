"""pvsim's side of the real run: the scenario as a rollout plan (JSON), handed to
`python -m pvreal.fleet.scenario_run` in a child process, whose progress lines drive the display
and whose timeline comes back as JSON. pvsim and pvreal stay independent backends: they meet only
in those files (formats in docs/validation.md).

The child runs in a session of its own, so a Ctrl-C reaches this side only: it stops the child
with SIGTERM (which tears its fleet down) and waits for that before letting the interrupt go
on; any other failure here does the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pvsim
from pvsim.scenario import Scenario
from pvsim.validate import timeline
from shared.errors import PvError
from shared.rollout import REGISTRY

CODE_ROOT = str(Path(pvsim.__file__).resolve().parent.parent)
TEARDOWN_S = 180.0  # how long the child may take to remove its fleet after an interrupt


def plan_of(scn: Scenario, devices: int) -> dict[str, Any]:
    """Everything the real side needs, in scenario seconds (it applies the time scale)."""
    engine = dict(scn.update_model.engine)
    engine.setdefault("PH_UPDATER_INTERVAL", scn.fleet.poll_interval_s)  # the idle poll, both worlds
    options = {k: getattr(scn.rollout, k) for k in REGISTRY[scn.rollout.strategy].options}
    return {
        "name": scn.name, "devices": devices, "time_scale": scn.validation.time_scale,
        "releases": [{"name": r.name, "at_s": r.at_s, "parts": list(r.parts), "defect": r.defect}
                     for r in scn.release],
        "strategy": scn.rollout.strategy,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "engine": engine,
        "hub_outages": [[o.at_s, o.duration_s] for o in scn.faults.hub_outages],
        "power_cuts": [[c.slot, c.at_s, c.off_s] for c in scn.validation.power_cuts],
        "until_s": scn.run.until_s, "settle_s": scn.validation.settle_s,
    }  # fmt: skip


def run_real(scn: Scenario, devices: int, work: Path, display: Any) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    plan_path, out = work / "plan.json", work / "real-timeline.json"
    plan_path.write_text(json.dumps(plan_of(scn, devices), indent=1))
    argv = [sys.executable, "-m", "pvreal.fleet.scenario_run", str(plan_path), str(work / "real"), str(out)]
    path = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": CODE_ROOT + (os.pathsep + path if path else "")}
    with open(work / "real.log", "wb") as log:
        # a session of its own: a Ctrl-C reaches this process only, which then stops the child
        # once (SIGTERM), so the child's teardown runs exactly once and to the end
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, cwd=CODE_ROOT, env=env,
                                start_new_session=True)  # fmt: skip
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                _show(display, line)
            rc = proc.wait()
        except BaseException:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TEARDOWN_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if rc != 0:
        tail = (work / "real.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise PvError("the real fleet's run failed (exit {}): {}".format(rc, " / ".join(tail) or "no output"))
    return timeline.load(out)


def _show(display: Any, line: bytes) -> None:
    try:
        doc = json.loads(line)
    except ValueError:
        return
    if "stage" in doc:
        display.stage(doc["stage"])
    elif "note" in doc:
        display.note(doc["note"])
    elif "releases" in doc:
        rows = [{"name": r["name"], "status": r["state"], "fleet": r["fleet"], "admitted": r["admitted"],
                 "ok": r["succeeded"], "bad": r["failed"]} for r in doc["releases"]]  # fmt: skip
        display.update(doc["now"], doc["until"], rows, doc["phases"])
