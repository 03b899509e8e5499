"""Engine fixtures for the engine tests, without pvsim (the engine is tested on its own).

- `build_state`: revisions built from tests/data/engine-revision.json. A revision has a BSP, a
  system-policy container `sysc` and an app container `app`; the arguments name the versions of
  their objects.
- `idle_engine`: a booted engine in a steady state, for tests that ask it questions (pv-ctrl).
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from shared.engine.config import Config
from shared.engine.events import DiskView, TrailView
from shared.engine.updater import Phase, Updater
from shared.state import State, parse_state

TEMPLATE = Path(__file__).resolve().parent / "data" / "engine-revision.json"
_OBJECT = "sha256 of: "  # a template value standing for the sha256 of the text after it


@cache
def _template() -> dict[str, Any]:
    return json.loads(TEMPLATE.read_text())


@cache
def build_state(kernel: str = "k1", app: str = "a1", sysc: str = "s1", app_goal: str = "") -> State:
    """One state per argument set (cached: tests may compare revisions by identity)."""
    doc = copy.deepcopy(_template())
    versions = {"kernel": kernel, "app": app, "sysc": sysc}
    for key, value in doc.items():
        if isinstance(value, str) and value.startswith(_OBJECT):
            text = value.removeprefix(_OBJECT).format(**versions)
            doc[key] = hashlib.sha256(text.encode()).hexdigest()
    if app_goal:
        doc["app/run.json"]["status_goal"] = app_goal
    return parse_state(doc, source=f"engine test revision ({kernel}, {app}, {sysc})")


IDLE_STATE = parse_state(
    {
        "#spec": "pantavisor-service-system@1",
        "bsp/kernel.img": "0" * 64,
        "bsp/pantavisor": "1" * 64,
        "bsp/run.json": {"addons": [], "initrd": "pantavisor", "linux": "kernel.img"},
    }
)


def idle_engine(local: bool = False, **config: str) -> Updater:
    """Booted into a committed revision with no containers: IDLE, remote or local mode."""
    booted = "locals/a" if local else "0"
    trails = {booted: TrailView(IDLE_STATE, None, True)}
    disk = DiskView(booted, booted, "", trails, IDLE_STATE.object_shas())
    engine, _ = Updater.boot(disk, Config.from_mapping(config))
    assert engine.phase is Phase.IDLE
    return engine
