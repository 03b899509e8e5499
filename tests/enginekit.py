"""A booted engine in a steady state, for tests that ask it questions (pv-ctrl rules)."""

from __future__ import annotations

from shared.engine.config import Config
from shared.engine.events import DiskView, TrailView
from shared.engine.updater import Phase, Updater
from shared.state import parse_state

STATE = parse_state(
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
    trails = {booted: TrailView(STATE, None, True)}
    disk = DiskView(booted, booted, "", trails, STATE.object_shas())
    engine, _ = Updater.boot(disk, Config.from_mapping(config))
    assert engine.phase is Phase.IDLE
    return engine
