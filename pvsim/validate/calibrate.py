"""Device figures fitted from a real fleet's timeline (pvsim.validate.timeline), as a scenario
fragment pvsim loads (`include = ["calibrated.toml"]`, or `pvsim validate` itself).

Each figure is a log-normal with the observations' median and the standard deviation of their
logarithms (at least SIGMA_FLOOR, so one repeated value does not make a constant):

| figure | from |
|---|---|
| `boot_s` | the Hub heard "Rebooting" to "Trying new revision" (an update's reboot), and a restart after a power cut to pv-ctrl answering |
| `container_start_s` | "Trying new revision" to TESTING, divided by the groups the update restarts (a BSP: root and app, one after the other; an app: its group) |
| `ready_s` | container STARTED to its ready signal accepted |
| `storage_write_mb_s` | changed MB / (DOWNLOADING to INPROGRESS), per device-update moving at least 0.5 MB |

The link is set far above the storage speed (`link_mbit_s`), since the fleet's link is a veth on
one machine: the measured transfer time is then the write speed's to explain. A figure with no
observation keeps the scenario's value (it is left out of the fragment).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

SIGMA_FLOOR = 0.05
MIN_DURATION_S = 1e-3
LINK_MBIT_S = 10_000.0
MIN_TRANSFER_MB = 0.5


def lognormal(samples: list[float]) -> dict[str, Any] | None:
    xs = [max(float(x), MIN_DURATION_S) for x in samples if x is not None and x >= 0]
    if not xs:
        return None
    logs = [math.log(x) for x in xs]
    sigma = statistics.pstdev(logs) if len(logs) > 1 else 0.0
    return {"dist": "lognormal", "median": round(statistics.median(xs), 4),
            "sigma": round(max(sigma, SIGMA_FLOOR), 4)}  # fmt: skip


def fit(doc: dict[str, Any]) -> dict[str, Any]:
    """The `[device]` figures a real timeline supports."""
    obs = doc["observations"]
    figures: dict[str, Any] = {}
    for key in ("boot_s", "container_start_s", "ready_s"):
        dist = lognormal(obs[key])
        if dist is not None:
            figures[key] = dist
    # a small download is all request overhead: it says nothing of the storage's speed
    speeds = [mb / s for mb, s in obs["transfers"] if s > 0 and mb >= MIN_TRANSFER_MB]
    dist = lognormal(speeds)
    if dist is not None:
        figures["storage_write_mb_s"] = dist
        figures["link_mbit_s"] = LINK_MBIT_S
    return figures


def fragment(figures: dict[str, Any], source: str, counts: dict[str, int]) -> str:
    """The figures as TOML: a `[device]` table with a comment saying where they come from."""
    lines = [f"# device figures fitted by `pvsim calibrate` from {source}",
             "# observations: " + ", ".join(f"{k} {n}" for k, n in counts.items()), "[device]"]  # fmt: skip
    for key, value in figures.items():
        if isinstance(value, dict):
            lines.append(f'{key} = {{dist = "lognormal", median = {value["median"]}, sigma = {value["sigma"]}}}')
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def observation_counts(doc: dict[str, Any]) -> dict[str, int]:
    return {k: len(v) for k, v in doc["observations"].items()}
