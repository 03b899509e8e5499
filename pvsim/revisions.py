"""Releases become real revisions: one parsed `State` per release, shared by every device (flyweight).

Revision 0 is the factory state: a BSP (kernel, initrd, modules, firmware) and a few containers
(`net` in the root group, `web` and `db` in the app group). Each release copies the state before
it and gives new object shas to the parts it changes: `bsp` changes the BSP objects, `app:<name>`
changes (or adds) that container. `shared.diff.diff_states` then decides reboot versus non-reboot
for real, and the bytes a device must fetch are the sizes of the objects it does not hold yet.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from pvsim.scenario import Scenario
from shared.diff import Transition, diff_states
from shared.state import State, parse_state

FACTORY = "0"
BASE_CONTAINERS = ("net", "web", "db")
# The factory image: object sizes in MB, for a device's first revision (what an A/B image holds).
BSP_OBJECTS = {"bsp/kernel.img": 8.0, "bsp/pantavisor": 4.0, "bsp/modules.squashfs": 20.0, "bsp/firmware.squashfs": 10.0}
CONTAINER_MB = 30.0


def _sha(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def _container_run(name: str) -> dict[str, Any]:
    run: dict[str, Any] = {
        "#spec": "service-manifest-run@1",
        "name": name,
        "type": "lxc",
        "config": "lxc.container.conf",
        "root-volume": "root.squashfs",
        "storage": {"lxc-overlay": {"persistence": "boot"}},
    }
    if name == "net":
        run["group"] = "root"
        run["status_goal"] = "STARTED"
    else:
        run["group"] = "app"
        run["status_goal"] = "READY" if name == "web" else "STARTED"
    return run


@dataclass(frozen=True, slots=True)
class Revision:
    """One release as the fleet sees it. Immutable and shared between devices."""

    index: int
    name: str
    state: State
    state_json: dict[str, Any]
    sizes: dict[str, float]  # object sha -> MB
    release: Any  # scenario Release (None for the factory revision)

    @property
    def image_mb(self) -> float:
        return math.fsum(self.sizes[sha] for sha in self.state.object_shas())  # order-independent


class RevisionSet:
    """All revisions of a scenario plus cached pairwise facts (what moves, reboot or not)."""

    def __init__(self, scenario: Scenario) -> None:
        self.revisions: list[Revision] = []
        self._pairs: dict[tuple[int, int], tuple[float, bool, tuple[str, ...]]] = {}
        json_state, sizes, versions = self._factory()
        self.revisions.append(self._make(0, FACTORY, json_state, sizes, None))
        for i, release in enumerate(scenario.release, start=1):
            json_state = dict(json_state)
            sizes = dict(sizes)
            changed = [p for p in release.parts]
            per_part = release.size_mb / len(changed)
            for part in changed:
                versions[part] = versions.get(part, 0) + 1
                self._change_part(json_state, sizes, part, f"{release.name}.{versions[part]}", per_part)
            self.revisions.append(self._make(i, release.name, json_state, sizes, release))

    @staticmethod
    def _factory() -> tuple[dict[str, Any], dict[str, float], dict[str, int]]:
        state: dict[str, Any] = {"#spec": "pantavisor-service-system@1"}
        sizes: dict[str, float] = {}
        for path, mb in BSP_OBJECTS.items():
            sha = _sha(path, "factory")
            state[path] = sha
            sizes[sha] = mb
        state["bsp/run.json"] = {
            "linux": "kernel.img",
            "initrd": "pantavisor",
            "modules": "modules.squashfs",
            "firmware": "firmware.squashfs",
        }
        for name in BASE_CONTAINERS:
            sha = _sha(name, "factory")
            state[f"{name}/root.squashfs"] = sha
            state[f"{name}/lxc.container.conf"] = _sha(name, "conf")
            state[f"{name}/run.json"] = _container_run(name)
            sizes[sha] = CONTAINER_MB
            sizes[_sha(name, "conf")] = 0.001
        return state, sizes, {}

    @staticmethod
    def _change_part(state: dict[str, Any], sizes: dict[str, float], part: str, tag: str, mb: float) -> None:
        if part == "bsp":
            # A BSP release ships a new kernel and modules; firmware and the pantavisor binary move
            # with it. The release's size is spread over the objects in proportion to the factory.
            total = sum(BSP_OBJECTS.values())
            for path, factory_mb in BSP_OBJECTS.items():
                sha = _sha(path, tag)
                state[path] = sha
                sizes[sha] = mb * factory_mb / total
            return
        name = part[4:]
        sha = _sha(name, tag)
        state[f"{name}/root.squashfs"] = sha
        sizes[sha] = mb
        if f"{name}/run.json" not in state:
            state[f"{name}/lxc.container.conf"] = _sha(name, "conf")
            sizes[_sha(name, "conf")] = 0.001
            state[f"{name}/run.json"] = _container_run(name)

    def _make(self, index: int, name: str, json_state: dict[str, Any], sizes: dict[str, float], release: Any) -> Revision:
        state = parse_state(json_state, source=f"release {name}")
        # keep only the sizes of objects this state references (the flyweight stays small)
        used = {sha: sizes[sha] for sha in state.object_shas()}
        return Revision(index, name, state, json_state, used, release)

    def __len__(self) -> int:
        return len(self.revisions)

    def __getitem__(self, index: int) -> Revision:
        return self.revisions[index]

    def transfer(self, old: int, new: int) -> tuple[float, bool, tuple[str, ...]]:
        """(MB to fetch, needs reboot, containers affected) for a device moving old -> new."""
        key = (old, new)
        cached = self._pairs.get(key)
        if cached is None:
            a, b = self.revisions[old], self.revisions[new]
            have = a.state.object_shas()
            mb = math.fsum(size for sha, size in b.sizes.items() if sha not in have)
            diff = diff_states(a.state, b.state)
            cached = (mb, diff.transition == Transition.REBOOT, tuple(diff.containers))
            self._pairs[key] = cached
        return cached
