"""What changed between two revisions and which transition Pantavisor would pick (pantavisor.md §3.6).

- `added`, `removed`, `changed` list every differing key of the two state JSONs, including the ones
  the parser never loads (`_sigs/*`, `*/src.json`, `*/build.json`).
- The transition looks only at loaded entries (objects, inline JSONs and `#spec`):
  * `reboot` when an entry owned by no container differs (BSP, device.json, groups.json,
    disks.json, other root files, `_config/<x>/...` of no container), or when an affected container
    has restart_policy `system` in the old or in the new state (any policy other than `container`
    counts as system);
  * `non-reboot` when every differing entry belongs to containers whose policy is `container` in
    both states;
  * `none` when no loaded entry differs.
- An entry belongs to a container only if both states where it exists agree on that; an entry that
  is system-owned on either side counts as system-owned (a reboot is the safe reading).
- `containers` are the containers with a differing loaded entry: the ones Pantavisor stops and
  starts again on a non-reboot transition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.state import RestartPolicy, State


class Transition(StrEnum):
    REBOOT = "reboot"
    NON_REBOOT = "non-reboot"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class StateDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    containers: tuple[str, ...]  # containers with a differing loaded entry, sorted
    transition: Transition
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The `pvreal rev diff --json` document."""
        return {
            "transition": self.transition.value,
            "reasons": list(self.reasons),
            "containers": list(self.containers),
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": list(self.changed),
        }


def diff_entries(
    old: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(added, removed, changed) keys between two flat mappings, each sorted."""
    added = tuple(sorted(k for k in new if k not in old))
    removed = tuple(sorted(k for k in old if k not in new))
    changed = tuple(sorted(k for k in old if k in new and old[k] != new[k]))
    return added, removed, changed


def diff_states(old: State, new: State) -> StateDiff:
    added, removed, changed = diff_entries(old.entries, new.entries)
    verbs = {**dict.fromkeys(added, "added"), **dict.fromkeys(removed, "removed")}
    verbs.update(dict.fromkeys(changed, "changed"))

    old_loaded, new_loaded = _loaded(old), _loaded(new)
    l_added, l_removed, l_changed = diff_entries(old_loaded, new_loaded)
    loaded_keys = sorted((*l_added, *l_removed, *l_changed))

    reasons: list[str] = []
    system_entries: list[str] = []
    containers: set[str] = set()
    for key in loaded_keys:
        owner = _owner(old, new, key)
        if owner is None:
            system_entries.append(key)
            reasons.append(f"system-owned entry {key} {verbs[key]}")
        else:
            containers.add(owner)

    system_containers: list[str] = []
    for name in sorted(containers):
        for label, state in (("old", old), ("new", new)):
            container = state.container(name)
            if container is not None and container.restart_policy != RestartPolicy.CONTAINER:
                system_containers.append(name)
                reasons.append(
                    f"container {name} has restart_policy {container.restart_policy} "
                    f"in the {label} state"
                )

    if system_entries or system_containers:
        transition = Transition.REBOOT
    elif containers:
        transition = Transition.NON_REBOOT
        reasons.append(
            "only containers with restart_policy container changed: "
            + ", ".join(sorted(containers))
        )
    else:
        transition = Transition.NONE
        if added or removed or changed:
            reasons.append(
                "only entries Pantavisor does not load changed (signatures, src.json, build.json)"
            )
        else:
            reasons.append("the two states are identical")

    return StateDiff(
        added=added,
        removed=removed,
        changed=changed,
        containers=tuple(sorted(containers)),
        transition=transition,
        reasons=tuple(reasons),
    )


def _loaded(state: State) -> dict[str, Any]:
    return {"#spec": state.spec, **state.loaded()}


def _owner(old: State, new: State, key: str) -> str | None:
    if key == "#spec":
        return None
    owners = {s.owner(key) for s in (old, new) if key in s.entries}
    return owners.pop() if len(owners) == 1 else None
