"""Engine test kit, without pvsim (the engine is driven directly, as a backend would: events in,
commands out).

- `build_state`: revisions built from tests/data/engine-revision.json. A revision has a BSP, a
  system-policy container `sysc` and an app container `app`; the arguments name the versions of
  their objects.
- `idle_engine`: a booted engine in a steady state, for tests that ask it questions (pv-ctrl).
- small revisions (`OLD`, `BSP`, `APP`), a booted engine, and readers of the commands it answers.
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from shared.engine.commands import Command, FetchObject, PersistProgress, Reboot, SetBootEnv
from shared.engine.config import Config, Ordering
from shared.engine.events import (
    ContainerStarted,
    DiskView,
    MetadataReceived,
    ObjectFetched,
    PendingSteps,
    Step,
    StorageStats,
    TrailView,
)
from shared.engine.progress import Progress, Status
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
ROOMY = StorageStats(10**9, 5 * 10**8)
FAITHFUL = Config(ordering=Ordering.FAITHFUL)
HARDENED = Config(ordering=Ordering.HARDENED)


def idle_engine(local: bool = False, **config: str) -> Updater:
    """Booted into a committed revision with no containers: IDLE, remote or local mode."""
    booted = "locals/a" if local else "0"
    trails = {booted: TrailView(IDLE_STATE, None, True)}
    disk = DiskView(booted, booted, "", trails, IDLE_STATE.object_shas())
    engine, _ = Updater.boot(disk, Config.from_mapping(config))
    assert engine.phase is Phase.IDLE
    return engine


# ----------------------------------------------------------------------------- revisions


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def revision(
    kernel: str = "k1",
    app: str = "a1",
    *,
    app_recovery: dict[str, Any] | None = None,
    group_recovery: dict[str, Any] | None = None,
) -> State:
    """A BSP and one container `app` (group `app`, goal STARTED). `kernel` decides the BSP (a new
    one means a reboot update), `app` the container's image (a new one: a non-reboot update).
    `app_recovery` / `group_recovery`: the container's and its group's `auto_recovery`."""
    group: dict[str, Any] = {
        "name": "app",
        "status_goal": "STARTED",
        "restart_policy": "container",
        "timeout": 60,
    }
    if group_recovery is not None:
        group["auto_recovery"] = group_recovery
    run: dict[str, Any] = {
        "#spec": "service-manifest-run@1",
        "config": "lxc.container.conf",
        "drivers": {"manual": [], "optional": [], "required": []},
        "group": "app",
        "name": "app",
        "restart_policy": "container",
        "root-volume": "root.squashfs",
        "storage": {"lxc-overlay": {"persistence": "boot"}},
        "type": "lxc",
        "volumes": [],
    }
    if app_recovery is not None:
        run["auto_recovery"] = app_recovery
    return parse_state(
        {
            "#spec": "pantavisor-service-system@1",
            "bsp/run.json": {"linux": "kernel.img", "initrd": "pantavisor", "addons": []},
            "bsp/kernel.img": _sha("kernel " + kernel),
            "bsp/pantavisor": _sha("pantavisor " + kernel),
            "device.json": {"groups": [group]},
            "app/run.json": run,
            "app/root.squashfs": _sha("app " + app),
            "app/lxc.container.conf": _sha("app conf"),
        },
        source=f"enginekit revision ({kernel}, {app})",
    )


OLD = revision()
BSP = revision(kernel="k2")  # a reboot update of OLD
APP = revision(app="a2")  # a non-reboot update of OLD


def rec(status: Status, msg: str = "", retries: int = 0) -> Progress:
    return Progress.make(status, msg, retries)


# ----------------------------------------------------------------------------- booting


def boot_disk(
    booted: str = "1",
    pv_rev: str = "1",
    pv_try: str = "",
    trails: dict[str, TrailView] | None = None,
    objects: frozenset[str] | None = None,
    config: Config = FAITHFUL,
) -> tuple[Updater, list[Command]]:
    """Boot from a DiskView; by default revision "1" (OLD) committed with a DONE record."""
    if trails is None:
        trails = {"1": TrailView(OLD, rec(Status.DONE, "Update finished"), True)}
    if objects is None:
        objects = frozenset().union(
            *(t.state.object_shas() for t in trails.values() if t.state is not None)
        )
    return Updater.boot(DiskView(booted, pv_rev, pv_try, trails, objects, ROOMY), config)


def settle(engine: Updater) -> list[Command]:
    """Every container of the running revision reports STARTED (its goal here)."""
    out: list[Command] = []
    assert engine.running_state is not None
    for c in engine.running_state.containers:
        out += engine.handle(ContainerStarted(c.name))
    return out


def running(config: Config = FAITHFUL, **kw: Any) -> Updater:
    """Booted into committed revision "1" (OLD), containers up, IDLE."""
    engine, _ = boot_disk(config=config, **kw)
    settle(engine)
    assert engine.phase is Phase.IDLE
    return engine


def offer(engine: Updater, state: State, rev: str = "2", **step: Any) -> list[Command]:
    return engine.handle(PendingSteps((Step(rev, state, **step),)))


def metadata(engine: Updater, state: State, rev: str = "2") -> list[Command]:
    return engine.handle(MetadataReceived(rev, {s: 10 for s in state.object_shas()}, ROOMY))


def download(engine: Updater, state: State, rev: str = "2") -> list[Command]:
    """Offer `state` as step `rev`, answer its metadata and every object fetch: the commands."""
    out = offer(engine, state, rev)
    answered = metadata(engine, state, rev)
    out += answered
    for fetch in [c for c in answered if isinstance(c, FetchObject)]:
        out += engine.handle(ObjectFetched(fetch.sha))
    return out


# What the Hub sees of an intake and download at retry count 0 (step "2", as `download` does it)
INTAKE_RECORDS = [
    ("QUEUED", "Retried 0 of 10", 5, 0),
    ("QUEUED", "Downloading update metadata, retry 1 of 10", 5, 1),
    ("DOWNLOADING", "Downloading update artifacts, retry 1 of 10", 25, 1),
    ("DOWNLOADING", "Downloading update artifacts, retry 1 of 10", 25, 1),
]


# ----------------------------------------------------------------------------- reading commands


def records(cmds: list[Command], rev: str | None = None) -> list[tuple[str, str, int, int]]:
    """The PersistProgress records, as the Hub would see their fields."""
    return [
        (c.record.status.value, c.record.status_msg, c.record.progress, c.record.retries)
        for c in cmds
        if isinstance(c, PersistProgress) and (rev is None or c.rev == rev)
    ]


def env_writes(cmds: list[Command]) -> list[tuple[str | None, str | None]]:
    """Each SetBootEnv as (pv_rev, pv_try); None = key left alone, "" = unset."""
    return [(c.pv_rev, c.pv_try) for c in cmds if isinstance(c, SetBootEnv)]


def reboots(cmds: list[Command]) -> list[str]:
    return [c.reason for c in cmds if isinstance(c, Reboot)]
