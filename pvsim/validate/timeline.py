"""The timeline both worlds write and `pvsim calibrate` reads (JSON; docs/validation.md).

Times are scenario seconds since the run started (real seconds divided by the time scale).

    {"format": "pvtwin-validation-timeline/1", "world": "real" | "sim", "scenario": NAME,
     "devices": N, "time_scale": S,
     "releases": [{"name", "at_s", "changed_mb", "state", "admitted", "succeeded", "failed",
                   "timed_out"}],
     "slots": [{"release", "position", "device", "reports": [[t, status, status-msg], ...],
                "outcome": "succeeded" | "failed" | null, "outcome_t": t | null}],
     "observations": {"boot_s": [...], "container_start_s": [...], "ready_s": [...],
                      "transfers": [[mb, seconds], ...]}}

A slot is one device's part in one release, named by its admission position (0 = admitted
first): the two worlds pick devices in different orders (pvsim a seeded permutation, the real
Hub registration order), so the k-th admitted device of one is compared with the k-th of the
other. `reports` are the progress records the Hub heard, in order. `observations` are what the
real side measured (empty lists for pvsim): boots ("Rebooting" to "Trying new revision", and a
restart after a power cut to pv-ctrl answering), container starts ("Trying new revision" to
TESTING per group restarted), ready signals (STARTED to the signal accepted), and downloads
(changed MB, DOWNLOADING to INPROGRESS); docs/validation.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.errors import PvError

FORMAT = "pvtwin-validation-timeline/1"
OBSERVATIONS = ("boot_s", "container_start_s", "ready_s", "transfers")


def empty(world: str, scenario: str, devices: int, time_scale: float) -> dict[str, Any]:
    return {"format": FORMAT, "world": world, "scenario": scenario, "devices": devices,
            "time_scale": time_scale, "releases": [], "slots": [],
            "observations": {k: [] for k in OBSERVATIONS}}  # fmt: skip


def save(doc: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise PvError(f"cannot read: {exc.strerror}", source=str(path)) from None
    except json.JSONDecodeError as exc:
        raise PvError(f"not JSON: {exc}", source=str(path)) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PvError(f"not a validation timeline (format {FORMAT!r})", source=str(path), key="format")
    observations = doc.get("observations")
    if not isinstance(observations, dict):
        raise PvError("missing", source=str(path), key="observations")
    for key in OBSERVATIONS:
        if not isinstance(observations.get(key), list):
            raise PvError("must be a list", source=str(path), key=f"observations.{key}")
    return doc


def statuses(slot: dict[str, Any]) -> list[str]:
    """The slot's Hub-visible status sequence: each status the Hub heard, repeats folded (a
    DOWNLOADING at 10 % then at 60 % is one step), the final one with its message."""
    seq: list[str] = []
    reports = slot["reports"]
    for k, (_, status, msg) in enumerate(reports):
        label = f"{status}: {msg}" if k == len(reports) - 1 and msg else status
        if not seq or seq[-1] != label:
            if seq and seq[-1] == status and label != status:
                seq[-1] = label
            else:
                seq.append(label)
    return seq
