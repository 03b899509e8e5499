"""One GC rule for every backend: the same disk given to pvsim's crashcheck device and to the
real executor on a temp dir loses the same revisions and the same objects (shared.engine.gc)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pvreal.device.executor import Executor
from pvreal.storage import Storage
from pvsim.memdevice import Behaviour, MemDevice, MemDisk
from shared.engine.commands import RunGc
from shared.engine.config import DEFAULT_CONFIG
from shared.engine.events import GcDone, TrailView
from shared.engine.gc import keep_revisions
from shared.state import parse_state


def blob(name: str) -> bytes:
    return f"object {name}".encode()


def sha(name: str) -> str:
    return hashlib.sha256(blob(name)).hexdigest()


def state_of(*names: str) -> dict:
    """A full state whose BSP is shared by every revision, plus one object per name."""
    state = {
        "#spec": "pantavisor-service-system@1",
        "bsp/kernel.img": sha("kernel"),
        "bsp/pantavisor": sha("initrd"),
        "bsp/run.json": {"addons": [], "initrd": "pantavisor", "linux": "kernel.img"},
    }
    state.update({f"app/{n}.bin": sha(n) for n in names})
    return state


# rev -> the objects it adds to the shared BSP; "locals/dev" is a local revision
DISK = {
    "0": ("factory",),
    "1": ("old", "common"),
    "2": ("running", "common"),
    "3": ("committed",),
    "locals/dev": ("local",),
}
POOL = ("kernel", "initrd", "factory", "old", "common", "running", "committed", "local",
        "orphan", "inflight")


@pytest.mark.parametrize(
    "keep, keep_objects",
    [
        # what the engine asks while updating from 2 (committed 3) to 4, factory kept
        (keep_revisions(running="2", in_flight="4", pv_rev="3", pv_try="", config=DEFAULT_CONFIG),
         frozenset({sha("inflight"), sha("common")})),
        (frozenset({"2"}), frozenset()),
        (frozenset({"locals/dev", "1"}), frozenset({sha("orphan")})),
    ],
)
def test_both_backends_delete_the_same(tmp_path: Path, keep, keep_objects):
    command = RunGc(frozenset(keep), frozenset(keep_objects), "test")

    sim = _sim_device()
    sim.execute(command)
    (sim_done,) = [e for e in sim._queue if isinstance(e, GcDone)]

    storage = _real_storage(tmp_path / "storage")
    executor = Executor(storage, None, None, None, DEFAULT_CONFIG)  # type: ignore[arg-type]
    (real_done,) = executor.execute(command)
    assert isinstance(real_done, GcDone)

    assert real_done.removed_revisions == sim_done.removed_revisions
    assert real_done.removed_objects == sim_done.removed_objects
    assert sorted(storage.revisions()) == sorted(sim.storage.trails)
    assert sorted(storage.objects.names()) == sorted(sim.storage.objects)
    assert real_done.reclaimed == sim_done.reclaimed  # sizes below are the real byte counts
    # and it did collect something: the test can fail
    assert real_done.removed_revisions and real_done.removed_objects
    assert storage.check().ok


def _sim_device() -> MemDevice:
    trails = {rev: TrailView(parse_state(state_of(*names))) for rev, names in DISK.items()}
    disk = MemDisk.settled(trails, (sha(n) for n in POOL), "3")  # every trail links its objects
    sizes = {sha(n): len(blob(n)) for n in POOL}
    return MemDevice(disk, DEFAULT_CONFIG, Behaviour(object_sizes=sizes))


def _real_storage(root: Path) -> Storage:
    storage = Storage(root)
    storage.init_layout()
    for name in POOL:
        storage.objects.put_bytes(sha(name), blob(name))
    for rev, names in DISK.items():
        state = state_of(*names)
        storage.write_state(rev, state)
        storage.link_trail(rev, state)
    return storage
