"""The revision model: a state JSON parsed the way Pantavisor's parser reads it (pantavisor.md §1).

Rules, in the order `parse_state` applies them:

1. The root is a JSON object without duplicate keys; `#spec` picks the format:
   `pantavisor-service-system@1` (current) or `pantavisor-multi-platform@1` (legacy).
2. Every key other than `#spec` is a relative path: not empty, no leading `/`, no empty, `.` or
   `..` component.
3. Keys are classified: `_sigs/*` are signatures and `*/src.json`, `*/build.json` are build
   provenance; none of them is loaded (neither an object nor an inline JSON). A `*.json` key whose
   value is not a sha256 string is an inline JSON file; every other key is an object and its value
   must be a sha256 (64 lowercase hex digits).
4. BSP: `bsp/run.json` (service-system) or `pantavisor.json` (multi-platform). A full state needs
   kernel + initrd, or fit, or rpiab, and every boot asset it names must be an object of the state.
5. Groups: `device.json` → `groups`; else a top-level `groups.json` (ignored when `device.json`
   exists); else the shipped defaults (`shared.default_groups`) and runlevel mode.
6. Containers: `<name>/run.json`, validated key by key; unassigned containers go to groups by the
   §1.4 rules; status_goal, restart_policy and auto_recovery (all or nothing) come from the group
   when the container has none.
7. A directory that carries container parts (`lxc.container.conf`, `root.squashfs`, `_dm/`, a
   docker `src.json`) but no `run.json` is rejected. Pantavisor itself would load such files as
   system objects and never start anything, which is always a broken package (typically a
   half-removed container), so the twin refuses it instead of silently rebooting for it.

Partial mode (`partial=True`) is for pvtx packages and transactions in progress: it skips the BSP
requirement and the checks that boot assets / root volumes exist, and a container may name a group
the package does not define (it then keeps its own values, or the parser defaults STARTED /
container, because the device's groups are not known yet). Everything else is checked the same way.

Every error is an `InvalidState` (or `InvalidJson` from the text parser) naming the key.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar

from shared import canonical
from shared.default_groups import DEFAULT_GROUPS_JSON, DEFAULT_GROUPS_SOURCE, RUNLEVELS
from shared.errors import InvalidState

SYSTEM1_SPEC = "pantavisor-service-system@1"
MULTI1_SPEC = "pantavisor-multi-platform@1"
SUPPORTED_SPECS = (SYSTEM1_SPEC, MULTI1_SPEC)
RUN_SPEC = "service-manifest-run@1"
SIGNATURE_SPEC = "pvs@2"

_SHA_RE = re.compile(r"[0-9a-f]{64}\Z")
_ANY_CASE_SHA_RE = re.compile(r"[0-9a-fA-F]{64}\Z")
_DURATION_RE = re.compile(r"[0-9]+(s|m|min|h)\Z")
_E = TypeVar("_E", bound=StrEnum)  # the enum a field is read as

CONFIG_DIR = "_config"
SIGS_DIR = "_sigs"
BSP_DIR = "bsp"
# bsp/run.json key -> the file Pantavisor links for it into a revision's `.pv/` (pantavisor.md §1.2).
BOOT_ASSET_NAMES: Mapping[str, str] = MappingProxyType({
    "linux": "pv-kernel.img",
    "initrd": "pv-initrd.img",
    "fdt": "pv-fdt.dtb",
    "fit": "pantavisor.fit",
})
# Files the parser never loads: a change to them alone restarts nothing.
_UNLOADED_BASENAMES = ("src.json", "build.json")
# Paths whose presence marks a directory as a container's part (rule 7).
_CONTAINER_PART_FILES = ("lxc.container.conf", "root.squashfs", "root.squashfs.docker-digest")
_CONTAINER_SRC_SPEC = "service-manifest-src@1"
_SYSTEM_JSONS = ("device.json", "groups.json", "disks.json", "disks_v3.json")


class Persistence(StrEnum):
    PERMANENT = "permanent"
    REVISION = "revision"
    BOOT = "boot"


class StatusGoal(StrEnum):
    MOUNTED = "MOUNTED"
    STARTED = "STARTED"
    READY = "READY"


class RestartPolicy(StrEnum):
    SYSTEM = "system"
    CONTAINER = "container"


AUTO_RECOVERY_POLICIES = ("no", "always", "on-failure", "unless-stopped")


@dataclass(frozen=True, slots=True)
class AutoRecovery:
    """run.json / group `auto_recovery`. Absent numeric fields take these defaults."""

    policy: str = "no"
    max_retries: int = 0
    retry_delay: float = 0.0
    backoff_factor: float = 1.0
    reset_window: float = 0.0
    stable_timeout: float = 0.0
    backoff_policy: str = "reboot"  # "reboot" | "never" | a duration such as "30s", "10min", "1h"


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    status_goal: StatusGoal
    restart_policy: RestartPolicy
    timeout: int | None  # None: the engine applies PV_UPDATER_GOALS_TIMEOUT (120)
    auto_recovery: AutoRecovery | None
    description: str = ""


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    group: str
    status_goal: StatusGoal  # resolved: own value, else the group's
    restart_policy: RestartPolicy  # resolved: own value, else the group's
    auto_recovery: AutoRecovery | None  # resolved: own, else inherited whole from the group
    root_volume: str | None  # without the "dm:" prefix
    verity: bool  # root-volume had the "dm:" prefix
    storage: Mapping[str, Persistence]
    roles: tuple[str, ...]
    volumes: tuple[str, ...]
    drivers: Mapping[str, tuple[str, ...]]
    run: Mapping[str, Any]  # the raw run.json (or multi-platform platform JSON)
    storage_disks: Mapping[str, str] = field(default_factory=dict)  # storage dir -> `disk`
    config: str | None = None  # LXC config path
    explicit_group: bool = True  # False: assigned by the §1.4 default rules
    run_key: str = ""  # the state key holding `run` ("<name>/run.json" or a legacy platform JSON)


@dataclass(frozen=True, slots=True)
class Bsp:
    """`bsp/run.json` (or the legacy `pantavisor.json`); file names as written there."""

    linux: str | None = None
    initrd: str | None = None
    fdt: str | None = None
    fit: str | None = None
    rpiab: str | None = None
    modules: str | None = None
    modules_by_release: Mapping[str, str] = field(default_factory=dict)  # modules_<uname -r>
    firmware: str | None = None
    addons: tuple[str, ...] = ()
    initrd_config: str | None = None

    @property
    def bootable(self) -> bool:
        return bool((self.linux and self.initrd) or self.fit or self.rpiab)

    def asset_names(self) -> tuple[str, ...]:
        names = [
            self.linux,
            self.initrd,
            self.fdt,
            self.fit,
            self.rpiab,
            self.modules,
            self.firmware,
            self.initrd_config,
            *self.modules_by_release.values(),
            *self.addons,
        ]
        return tuple(n for n in names if n)


@dataclass(frozen=True, slots=True, eq=False)
class State:
    spec: str
    entries: Mapping[str, Any]  # every key of the state JSON as given
    objects: Mapping[str, str]  # path -> sha256 (loaded objects only)
    jsons: Mapping[str, Any]  # inline JSON files (loaded ones only)
    containers: tuple[Container, ...]  # start order: group order, then name
    groups: tuple[Group, ...]  # declared order
    signatures: Mapping[str, Any]  # "_sigs/<name>.json" -> its JSON
    runlevel_mode: bool
    bsp: Bsp | None = None
    partial: bool = False
    digest: str = ""  # sha256 of the canonical bytes; also equality and hash

    def owner(self, key: str) -> str | None:
        """The container a key belongs to (after stripping `_config/`), None for the system."""
        parts = key.split("/")
        if parts[0] == CONFIG_DIR and len(parts) > 1:
            parts = parts[1:]
        first = parts[0]
        if first in self._container_names():
            return first
        if self.spec == MULTI1_SPEC:
            for c in self.containers:
                if c.run_key == key:
                    return c.name
        return None

    def _container_names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.containers)

    def container(self, name: str) -> Container | None:
        for c in self.containers:
            if c.name == name:
                return c
        return None

    def group(self, name: str) -> Group | None:
        for g in self.groups:
            if g.name == name:
                return g
        return None

    def object_shas(self) -> frozenset[str]:
        return frozenset(self.objects.values())

    def loaded(self) -> Mapping[str, Any]:
        """Every entry the parser loads (objects and inline JSONs), i.e. what a diff compares."""
        return {**self.objects, **self.jsons}

    def canonical_bytes(self) -> bytes:
        return canonical.dump_bytes(dict(self.entries))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, State) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)


# --------------------------------------------------------------------------------------------
# entry point


def parse_state(
    data: Mapping[str, Any] | str | bytes,
    *,
    source: str | None = None,
    partial: bool = False,
) -> State:
    """Parse a state JSON (text, bytes or an already decoded object) into a `State`.

    `partial=True` accepts pvtx packages and states under construction (see the module doc): no
    BSP is required and references to boot assets, root volumes and groups outside the document
    are not checked. Raises `InvalidState` / `InvalidJson` naming `source` and the key.
    """
    if isinstance(data, str | bytes):
        root = canonical.loads(data, source=source)
    else:
        root = copy.deepcopy(data)  # the State must not change when the caller's dict does
    if not isinstance(root, Mapping):
        raise InvalidState(
            f"root must be a JSON object, found {type(root).__name__}", source=source
        )
    return _Parser(dict(root), source, partial).parse()


# --------------------------------------------------------------------------------------------
# small validators shared by the parser


def is_sha256(value: Any) -> bool:
    return isinstance(value, str) and bool(_SHA_RE.match(value))


def is_unloaded(key: str) -> bool:
    """Keys the parser skips: signatures and build provenance (`*/src.json`, `*/build.json`)."""
    parts = key.split("/")
    return parts[0] == SIGS_DIR or (len(parts) > 1 and parts[-1] in _UNLOADED_BASENAMES)


def check_path(key: str, *, source: str | None = None) -> None:
    """A state key must be a clean relative path."""
    if not isinstance(key, str):
        raise InvalidState("keys must be strings", source=source, key=repr(key))
    if not key:
        raise InvalidState("empty path", source=source, key=key)
    if key.startswith("/"):
        raise InvalidState("path must be relative, not absolute", source=source, key=key)
    if "\x00" in key:
        raise InvalidState("path contains a NUL character", source=source, key=key)
    for part in key.split("/"):
        if part == "":
            raise InvalidState("path has an empty component", source=source, key=key)
        if part in (".", ".."):
            raise InvalidState(f"path component {part!r} is not allowed", source=source, key=key)


LOCAL_PREFIX = "locals/"
REVISION_NAME_MAX = 63  # Pantavisor: a local revision name is shorter than 64 characters
_REV_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")


def check_revision_name(rev: Any) -> str:
    """A remote revision (`0`, `12`, ...) or a local one (`locals/<name>`): one short path
    component made of letters, digits and `._-`, so that it never escapes `trails/` nor names a
    file the system cannot create. pv-ctrl and the engine refuse any other name with this rule."""
    if not isinstance(rev, str):
        raise InvalidState("revision name must be a string", key=repr(rev))
    name = rev[len(LOCAL_PREFIX) :] if rev.startswith(LOCAL_PREFIX) else rev
    if len(name) > REVISION_NAME_MAX:
        raise InvalidState(f"revision name longer than {REVISION_NAME_MAX} characters",
                           key=rev[:40] + "...")
    if not _REV_NAME_RE.match(name) or name in ("current", "locals"):
        raise InvalidState(
            "revision name must be a number or locals/<name> made of letters, digits, '._-'",
            key=rev,
        )
    return rev


class _Parser:
    """One parse; holds the document and the source label for error messages."""

    def __init__(self, root: dict[str, Any], source: str | None, partial: bool):
        self.root = root
        self.source = source
        self.partial = partial

    def fail(self, message: str, key: str | None) -> InvalidState:
        return InvalidState(message, source=self.source, key=key)

    # ---- top level

    def parse(self) -> State:
        spec = self.spec()
        objects: dict[str, str] = {}
        jsons: dict[str, Any] = {}
        signatures: dict[str, Any] = {}
        for key, value in self.root.items():
            if key == "#spec":
                continue
            check_path(key, source=self.source)
            if key.split("/")[0] == SIGS_DIR:
                if key.endswith(".json") and key.count("/") == 1:
                    if not isinstance(value, Mapping):
                        raise self.fail("a signature must be a JSON object", key)
                    signatures[key] = value
                continue
            if is_unloaded(key):
                continue
            if key.endswith(".json") and not (
                isinstance(value, str) and _ANY_CASE_SHA_RE.match(value)
            ):
                jsons[key] = value
                continue
            if not is_sha256(value):
                raise self.fail(
                    f"expected a sha256 (64 lowercase hex digits), found {_short(value)}", key
                )
            objects[key] = value

        if spec == MULTI1_SPEC:
            bsp, platforms = self.multi1_parts(jsons)
        else:
            bsp = self.system1_bsp(jsons)
            platforms = {
                key.split("/")[0]: (key, value)
                for key, value in jsons.items()
                if _is_container_run_json(key)
            }
        if bsp is None and not self.partial:
            where = "pantavisor.json" if spec == MULTI1_SPEC else "bsp/run.json"
            raise self.fail(
                "a full state needs a BSP (kernel + initrd, fit or rpiab); a package needs partial mode (--partial)",
                where,
            )
        if bsp is not None and not self.partial:
            self.check_bsp_assets(bsp, objects, spec)

        groups, runlevel_mode = self.groups(jsons)
        containers = self.containers(platforms, groups, runlevel_mode, objects, jsons)
        if spec == SYSTEM1_SPEC:
            self.check_orphan_container_parts(platforms)

        entries = MappingProxyType(dict(self.root))
        return State(
            spec=spec,
            entries=entries,
            objects=MappingProxyType(objects),
            jsons=MappingProxyType(jsons),
            containers=containers,
            groups=groups,
            signatures=MappingProxyType(signatures),
            runlevel_mode=runlevel_mode,
            bsp=bsp,
            partial=self.partial,
            digest=hashlib.sha256(canonical.dump_bytes(dict(self.root))).hexdigest(),
        )

    def spec(self) -> str:
        if "#spec" not in self.root:
            raise self.fail("missing; expected one of " + ", ".join(SUPPORTED_SPECS), "#spec")
        spec = self.root["#spec"]
        if spec not in SUPPORTED_SPECS:
            raise self.fail(
                f"unknown spec {_short(spec)}; expected one of " + ", ".join(SUPPORTED_SPECS),
                "#spec",
            )
        return spec

    # ---- BSP

    def system1_bsp(self, jsons: Mapping[str, Any]) -> Bsp | None:
        key = "bsp/run.json"
        if key not in jsons:
            return None
        run = self.obj(jsons[key], key)
        modules_by_release = {
            k[len("modules_") :]: self.string(v, key, k)
            for k, v in run.items()
            if k.startswith("modules_")
        }
        addons = self.string_list(run.get("addons", []), key, "addons")
        return Bsp(
            linux=self.opt_string(run, key, "linux"),
            initrd=self.opt_string(run, key, "initrd"),
            fdt=self.opt_string(run, key, "fdt"),
            fit=self.opt_string(run, key, "fit"),
            rpiab=self.opt_string(run, key, "rpiab"),
            modules=self.opt_string(run, key, "modules"),
            modules_by_release=MappingProxyType(modules_by_release),
            firmware=self.opt_string(run, key, "firmware"),
            addons=addons,
            initrd_config=self.opt_string(run, key, "initrd_config"),
        )

    def multi1_parts(
        self, jsons: Mapping[str, Any]
    ) -> tuple[Bsp | None, dict[str, tuple[str, Any]]]:
        key = "pantavisor.json"
        if key not in jsons:
            return None, {}
        pv = self.obj(jsons[key], key)
        bsp = Bsp(
            linux=self.opt_string(pv, key, "linux"),
            initrd=self.opt_string(pv, key, "initrd"),
            fdt=self.opt_string(pv, key, "fdt"),
            fit=self.opt_string(pv, key, "fit"),
            firmware=self.opt_string(pv, key, "firmware"),
            addons=self.string_list(pv.get("addons", []), key, "addons"),
        )
        listed = self.string_list(pv.get("platforms", []), key, "platforms")
        # Every other inline JSON whose `name` is a listed platform is that platform's JSON;
        # listed platforms without one are dropped, as Pantavisor's legacy parser does.
        platforms: dict[str, tuple[str, Any]] = {}
        for jkey, value in jsons.items():
            if jkey == key or not isinstance(value, Mapping) or value.get("name") not in listed:
                continue
            name = value["name"]
            check_path(name, source=self.source)
            if name in platforms:
                raise self.fail(
                    f"platform {name!r} is also described by {platforms[name][0]}", jkey
                )
            platforms[name] = (jkey, value)
        return bsp, platforms

    def check_bsp_assets(self, bsp: Bsp, objects: Mapping[str, str], spec: str) -> None:
        where = "pantavisor.json" if spec == MULTI1_SPEC else "bsp/run.json"
        if not bsp.bootable:
            raise self.fail("needs linux and initrd, or fit, or rpiab", where)
        if spec == MULTI1_SPEC:
            return  # legacy paths may point into volumes (e.g. /volumes/firmware.squashfs)
        for name in bsp.asset_names():
            if f"{BSP_DIR}/{name}" not in objects:
                raise self.fail(f"names {name!r} but bsp/{name} is not an object", where)

    # ---- groups

    def groups(self, jsons: Mapping[str, Any]) -> tuple[tuple[Group, ...], bool]:
        if "device.json" in jsons:
            device = self.obj(jsons["device.json"], "device.json")
            if "groups" not in device:
                return (), False  # Pantavisor only warns; containers then cannot be placed
            return self.group_list(device["groups"], "device.json"), False
        if "groups.json" in jsons:
            return self.group_list(jsons["groups.json"], "groups.json"), False
        return self.group_list(list(DEFAULT_GROUPS_JSON), DEFAULT_GROUPS_SOURCE), True

    def group_list(self, value: Any, key: str) -> tuple[Group, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail("groups must be a non-empty array of objects", key)
        groups: list[Group] = []
        for i, item in enumerate(value):
            where = f"groups[{i}]"
            if not isinstance(item, Mapping):
                raise self.fail(f"{where} must be an object", key)
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise self.fail(f"{where}.name is missing or not a non-empty string", key)
            if any(g.name == name for g in groups):
                raise self.fail(f"{where}.name {name!r} is defined twice", key)
            groups.append(
                Group(
                    name=name,
                    status_goal=self.enum(StatusGoal, item, key, "status_goal", where)
                    or StatusGoal.STARTED,
                    restart_policy=self.enum(RestartPolicy, item, key, "restart_policy", where)
                    or RestartPolicy.CONTAINER,
                    timeout=self.timeout(item, key, where),
                    auto_recovery=self.auto_recovery(item, key, where),
                    description=str(item.get("description", "")),
                )
            )
        return tuple(groups)

    def timeout(self, item: Mapping[str, Any], key: str, where: str) -> int | None:
        if "timeout" not in item:
            return None
        value = item["timeout"]
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(f"{where}.timeout must be a non-negative integer of seconds", key)
        return value

    # ---- containers

    def containers(
        self,
        platforms: Mapping[str, tuple[str, Any]],
        groups: tuple[Group, ...],
        runlevel_mode: bool,
        objects: Mapping[str, str],
        jsons: Mapping[str, Any],
    ) -> tuple[Container, ...]:
        parsed: dict[str, tuple[str, Mapping[str, Any], str | None]] = {}
        for name, (key, value) in sorted(platforms.items()):
            run = self.obj(value, key)
            parsed[name] = (key, run, self.explicit_group(run, key, groups, runlevel_mode))
        assignment = self.assign_groups(parsed, groups, runlevel_mode)
        by_name = {g.name: g for g in groups}
        built = [
            self.container(name, key, run, assignment[name], by_name, objects, jsons)
            for name, (key, run, _) in parsed.items()
        ]
        order = {g.name: i for i, g in enumerate(groups)}
        built.sort(key=lambda c: (order.get(c.group, len(order)), c.name))
        return tuple(built)

    def explicit_group(
        self, run: Mapping[str, Any], key: str, groups: tuple[Group, ...], runlevel_mode: bool
    ) -> str | None:
        group = run.get("group")
        if group is not None:
            group = self.string(group, key, "group")
        elif "runlevel" in run:  # deprecated alias, one of the four default group names
            group = self.string(run["runlevel"], key, "runlevel")
            if group not in RUNLEVELS:
                raise self.fail(f"runlevel must be one of {', '.join(RUNLEVELS)}", key)
        if group is None:
            return None
        if not any(g.name == group for g in groups) and not self.partial:
            raise self.fail(f"group {group!r} is not defined by the state's groups", key)
        return group

    def assign_groups(
        self,
        parsed: Mapping[str, tuple[str, Mapping[str, Any], str | None]],
        groups: tuple[Group, ...],
        runlevel_mode: bool,
    ) -> dict[str, tuple[str, bool]]:
        """name -> (group, explicit). §1.4: runlevel defaults or the last declared group."""
        result: dict[str, tuple[str, bool]] = {}
        unassigned = [n for n, (_, _, g) in parsed.items() if g is None]  # sorted names
        for name, (_, _, group) in parsed.items():
            if group is not None:
                result[name] = (group, True)
        if not unassigned:
            return result
        if not groups:
            key = parsed[unassigned[0]][0]
            raise self.fail("container has no group and device.json defines no groups", key)
        if runlevel_mode:
            root_taken = any(g == "root" for g, _ in result.values())
            for i, name in enumerate(unassigned):
                result[name] = ("root" if i == 0 and not root_taken else "platform", False)
        else:
            for name in unassigned:
                result[name] = (groups[-1].name, False)
        return result

    def container(
        self,
        name: str,
        key: str,
        run: Mapping[str, Any],
        assigned: tuple[str, bool],
        groups: Mapping[str, Group],
        objects: Mapping[str, str],
        jsons: Mapping[str, Any],
    ) -> Container:
        declared = run.get("name")
        if declared is None:
            raise self.fail("'name' is missing", key)
        if self.string(declared, key, "name") != name:
            raise self.fail(f"'name' is {declared!r} but the container directory is {name!r}", key)
        if "#spec" in run and run["#spec"] != RUN_SPEC:
            raise self.fail(f"'#spec' must be {RUN_SPEC!r}, found {_short(run['#spec'])}", key)
        if "type" in run and self.string(run["type"], key, "type") != "lxc":
            raise self.fail(f"'type' must be 'lxc', found {run['type']!r}", key)

        group_name, explicit = assigned
        group = groups.get(group_name)
        status_goal = self.enum(StatusGoal, run, key, "status_goal", None)
        restart_policy = self.enum(RestartPolicy, run, key, "restart_policy", None)
        own_recovery = self.auto_recovery(run, key, None)

        root_volume, verity = None, False
        if "root-volume" in run:
            root_volume = self.string(run["root-volume"], key, "root-volume")
            if root_volume.startswith("dm:"):
                root_volume, verity = root_volume[3:], True
            if not root_volume:
                raise self.fail("'root-volume' names no file", key)
        volumes = self.string_list(run.get("volumes", []), key, "volumes")
        storage, disks = self.storage(run.get("storage", {}), key)
        if not self.partial:
            self.check_container_files(name, key, root_volume, verity, volumes, objects, jsons)

        return Container(
            name=name,
            group=group_name,
            status_goal=status_goal or (group.status_goal if group else StatusGoal.STARTED),
            restart_policy=restart_policy
            or (group.restart_policy if group else RestartPolicy.CONTAINER),
            auto_recovery=own_recovery
            if own_recovery is not None
            else (group.auto_recovery if group else None),
            root_volume=root_volume,
            verity=verity,
            storage=MappingProxyType(storage),
            roles=self.roles(run.get("roles", []), key),
            volumes=volumes,
            drivers=MappingProxyType(self.drivers(run.get("drivers", {}), key)),
            run=MappingProxyType(dict(run)),
            storage_disks=MappingProxyType(disks),
            config=self.opt_string(run, key, "config"),
            explicit_group=explicit,
            run_key=key,
        )

    def check_container_files(
        self,
        name: str,
        key: str,
        root_volume: str | None,
        verity: bool,
        volumes: tuple[str, ...],
        objects: Mapping[str, str],
        jsons: Mapping[str, Any],
    ) -> None:
        if not key.endswith("/run.json"):
            return  # legacy platform JSONs name paths in their own way
        for vol in ([root_volume] if root_volume else []) + list(volumes):
            vol = vol[3:] if vol.startswith("dm:") else vol
            if f"{name}/{vol}" not in objects:
                raise self.fail(f"volume {vol!r} is not an object of the state ({name}/{vol})", key)
        if verity and f"{name}/_dm/{root_volume}.json" not in jsons:
            raise self.fail(
                f"'root-volume' asks for dm-verity but {name}/_dm/{root_volume}.json is missing",
                key,
            )

    def storage(self, value: Any, key: str) -> tuple[dict[str, Persistence], dict[str, str]]:
        storage = self.obj(value, key, "storage")
        result: dict[str, Persistence] = {}
        disks: dict[str, str] = {}
        for vol, spec in storage.items():
            if not isinstance(spec, Mapping):
                raise self.fail(f"storage[{vol!r}] must be an object", key)
            if "persistence" not in spec:
                continue  # Pantavisor creates no volume without a persistence value
            persistence = spec["persistence"]
            try:
                result[vol] = Persistence(persistence)
            except ValueError:
                result[vol] = Persistence.BOOT  # Pantavisor warns and falls back to boot
            if "disk" in spec:
                disks[vol] = self.string(spec["disk"], key, f"storage[{vol!r}].disk")
        return result, disks

    def roles(self, value: Any, key: str) -> tuple[str, ...]:
        if isinstance(value, Mapping):  # object form: role names are the keys
            return tuple(sorted(str(k) for k in value))
        return self.string_list(value, key, "roles")

    def drivers(self, value: Any, key: str) -> dict[str, tuple[str, ...]]:
        drivers = self.obj(value, key, "drivers")
        result = {}
        for kind, names in drivers.items():
            if kind not in ("required", "optional", "manual"):
                raise self.fail(f"drivers.{kind}: expected required, optional or manual", key)
            result[kind] = self.string_list(names, key, f"drivers.{kind}")
        return result

    def check_orphan_container_parts(self, platforms: Mapping[str, Any]) -> None:
        for key, value in self.root.items():
            parts = key.split("/")
            top = parts[0]
            if len(parts) < 2 or top in platforms or top == BSP_DIR or top.startswith("_"):
                continue
            rest = "/".join(parts[1:])
            is_part = (
                rest in _CONTAINER_PART_FILES
                or parts[1] == "_dm"
                or (
                    rest == "src.json"
                    and isinstance(value, Mapping)
                    and value.get("#spec") == _CONTAINER_SRC_SPEC
                )
            )
            if is_part:
                raise self.fail(
                    f"{key} is a container part but {top}/run.json is missing", f"{top}/run.json"
                )

    # ---- auto_recovery (groups and containers)

    def auto_recovery(
        self, item: Mapping[str, Any], key: str, where: str | None
    ) -> AutoRecovery | None:
        if "auto_recovery" not in item:
            return None
        label = f"{where}.auto_recovery" if where else "auto_recovery"
        ar = self.obj(item["auto_recovery"], key, label)
        policy = ar.get("policy", "no")
        if policy not in AUTO_RECOVERY_POLICIES:
            raise self.fail(
                f"{label}.policy must be one of {', '.join(AUTO_RECOVERY_POLICIES)}", key
            )
        backoff_policy = ar.get("backoff_policy", "reboot")
        if not isinstance(backoff_policy, str) or not (
            backoff_policy in ("reboot", "never") or _DURATION_RE.match(backoff_policy)
        ):
            raise self.fail(
                f"{label}.backoff_policy must be reboot, never or a duration like 30s", key
            )
        defaults = AutoRecovery()
        return AutoRecovery(
            policy=policy,
            max_retries=int(self.number(ar, "max_retries", defaults.max_retries, key, label)),
            retry_delay=self.number(ar, "retry_delay", defaults.retry_delay, key, label),
            backoff_factor=self.number(ar, "backoff_factor", defaults.backoff_factor, key, label),
            reset_window=self.number(ar, "reset_window", defaults.reset_window, key, label),
            stable_timeout=self.number(ar, "stable_timeout", defaults.stable_timeout, key, label),
            backoff_policy=backoff_policy,
        )

    def number(
        self, obj: Mapping[str, Any], name: str, default: float, key: str, label: str
    ) -> float:
        value = obj.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise self.fail(f"{label}.{name} must be a non-negative number", key)
        if name == "max_retries" and value != int(value):
            raise self.fail(f"{label}.{name} must be an integer", key)
        return value if name == "max_retries" else float(value)

    # ---- typed accessors

    def obj(self, value: Any, key: str, what: str | None = None) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            label = f"{what} " if what else ""
            raise self.fail(f"{label}must be a JSON object, found {_short(value)}", key)
        return value

    def string(self, value: Any, key: str, what: str) -> str:
        if not isinstance(value, str):
            raise self.fail(f"{what!r} must be a string, found {_short(value)}", key)
        return value

    def opt_string(self, obj: Mapping[str, Any], key: str, what: str) -> str | None:
        if what not in obj or obj[what] is None:
            return None
        value = self.string(obj[what], key, what)
        return value or None

    def string_list(self, value: Any, key: str, what: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{what!r} must be an array of strings, found {_short(value)}", key)
        return tuple(value)

    def enum(
        self, enum: type[_E], obj: Mapping[str, Any], key: str, what: str, where: str | None
    ) -> _E | None:
        if what not in obj:
            return None
        label = f"{where}.{what}" if where else what
        try:
            return enum(obj[what])
        except (ValueError, TypeError):
            allowed = ", ".join(m.value for m in enum)
            raise self.fail(
                f"{label} must be one of {allowed}, found {_short(obj[what])}", key
            ) from None


def _is_container_run_json(key: str) -> bool:
    parts = key.split("/")
    return (
        len(parts) == 2
        and parts[1] == "run.json"
        and parts[0] != BSP_DIR
        and not parts[0].startswith("_")
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
