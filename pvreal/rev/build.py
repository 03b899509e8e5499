"""Revision parts built from files (`pvreal rev add-container`, `pvreal rev add-bsp`).

A container build packs a root filesystem (a folder, or an OCI / `docker save` image) into a
reproducible squashfs object and writes the container's part into the state the way pvr's docker
template does: `NAME/root.squashfs`, `NAME/lxc.container.conf`, `NAME/run.json`
(`service-manifest-run@1`), `NAME/src.json` (provenance) and, with `--verity`,
`NAME/root.squashfs.hash` + `NAME/_dm/root.squashfs.json` with root-volume `dm:root.squashfs`.

A BSP build adds kernel, initrd (`bsp/pantavisor`), optional modules squashfs and fdt, and
`bsp/run.json`. `cmdline` in bsp/run.json is a pvtwin extension (Pantavisor keeps the kernel
command line in the bootloader); pvtwin's QEMU runner appends it.

A build writes its objects first and returns the state entries; the caller writes the state
(`save_state`: canonical and atomic) once every object is in place.
"""

from __future__ import annotations

import re
import shlex
import tempfile
from pathlib import Path
from typing import Any

from pvreal import oci, squashfs
from pvreal.durable import atomic_write
from pvreal.mounts import DOCKER_VOLUME_PREFIX, OVERLAY_KEY
from pvreal.objectstore import ObjectStore
from pvreal.runc import DEFAULT_PATH, LxcSettings, lxc_config_text
from shared import canonical
from shared.errors import InvalidJson, InvalidState

SERVICE_SYSTEM_SPEC = "pantavisor-service-system@1"
RUN_SPEC = "service-manifest-run@1"
SRC_SPEC = "service-manifest-src@1"
BSP_SRC_SPEC = "bsp-manifest-src@1"
ROOT_VOLUME = "root.squashfs"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------------------------
# state file


def load_state(path: Path) -> dict[str, Any]:
    """The state at `path`, or a new empty service-system state when the file does not exist."""
    if not path.exists():
        return {"#spec": SERVICE_SYSTEM_SPEC}
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidJson(f"cannot read: {exc.strerror}", source=str(path)) from None
    return canonical.loads_object(data, source=str(path))


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, canonical.dump_bytes(state))


def replace_part(state: dict[str, Any], prefix: str, entries: dict[str, Any]) -> dict[str, Any]:
    """Drop every key under `prefix` (an old version of the part), then add `entries`."""
    kept = {k: v for k, v in state.items() if not k.startswith(prefix)}
    kept.update(entries)
    return kept


# --------------------------------------------------------------------------------------------
# add-container


def check_container_name(name: str) -> str:
    if not _NAME_RE.match(name) or name == "bsp":
        raise InvalidState(
            "container name must be letters, digits, '._-', not start with '_' or '.', not 'bsp'",
            key=name,
        )
    return name


def docker_volume_key(path: str) -> str:
    """`/etc/foo/` -> `docker--etc-foo`, the storage key pvr's docker template uses."""
    return DOCKER_VOLUME_PREFIX + "-".join(p for p in path.split("/") if p)


def build_container(
    name: str,
    *,
    rootfs: Path | None,
    oci_image: Path | None,
    objects: ObjectStore,
    group: str | None = None,
    status_goal: str | None = None,
    restart_policy: str | None = None,
    init: str | None = None,
    persistence: str = "boot",
    memory_limit: int | None = None,
    pids_limit: int | None = None,
    verity: bool = False,
) -> dict[str, Any]:
    """The state entries of container `name` (objects written to `objects`)."""
    check_container_name(name)
    objects.dir.mkdir(parents=True, exist_ok=True)
    storage: dict[str, Any] = {OVERLAY_KEY: {"persistence": persistence}}
    src: dict[str, Any] = {"#spec": SRC_SPEC, "template": "builtin-lxc-docker", "args": {}}
    init_args: tuple[str, ...] = ("/sbin/init",)
    env: tuple[str, ...] = (DEFAULT_PATH,)
    cwd = "/"
    with tempfile.TemporaryDirectory(dir=objects.dir, prefix=".build-") as tmp_name:
        tmp = Path(tmp_name)
        if oci_image is not None:
            if not oci_image.is_file() and not oci_image.is_dir():
                raise InvalidState("OCI image not found", source=str(oci_image), key="--oci")
            rootfs = tmp / "rootfs"
            image = oci.extract_image(oci_image, rootfs)
            init_args = tuple(image.init_args)
            env = tuple(image.config.get("Env") or env)
            cwd = image.config.get("WorkingDir") or "/"
            for volume in sorted(image.config.get("Volumes") or {}):
                storage[docker_volume_key(volume)] = {"persistence": "permanent"}
            src.update(docker_config=image.config, docker_source="local")
            if image.config_digest:
                src["docker_digest"] = image.config_digest
            if image.repo_tags:
                repo, _, tag = image.repo_tags[0].rpartition(":")
                src.update(docker_name=repo or image.repo_tags[0], docker_tag=tag)
        elif rootfs is None or not rootfs.is_dir():
            raise InvalidState(
                "root filesystem folder not found", source=str(rootfs), key="--rootfs"
            )
        else:
            src["rootfs"] = str(rootfs.resolve())
        if init:
            init_args = tuple(shlex.split(init))
        settings = LxcSettings(
            init=init_args, cwd=cwd, env=env, memory_limit=memory_limit, pids_limit=pids_limit
        )
        image_file = tmp / ROOT_VOLUME
        squashfs.make_squashfs(rootfs, image_file)
        entries: dict[str, Any] = {}
        root_volume = ROOT_VOLUME
        if verity:
            hash_file = tmp / f"{ROOT_VOLUME}.hash"
            info = squashfs.verity_format(image_file, hash_file)
            entries[f"{name}/{ROOT_VOLUME}.hash"] = objects.adopt_file(hash_file)
            entries[f"{name}/_dm/{ROOT_VOLUME}.json"] = info.dm_json(
                ROOT_VOLUME, f"{ROOT_VOLUME}.hash"
            )
            src["dm_enabled"] = {ROOT_VOLUME: True}
            root_volume = "dm:" + ROOT_VOLUME
        entries[f"{name}/{ROOT_VOLUME}"] = objects.adopt_file(image_file)
    conf = lxc_config_text(settings, name).encode()
    entries[f"{name}/lxc.container.conf"] = objects.add_bytes(conf)
    run: dict[str, Any] = {
        "#spec": RUN_SPEC,
        "config": "lxc.container.conf",
        "drivers": {"manual": [], "optional": [], "required": []},
        "name": name,
        "root-volume": root_volume,
        "storage": storage,
        "type": "lxc",
        "volumes": [],
    }
    for key, value, arg in (
        ("group", group, "PV_GROUP"),
        ("status_goal", status_goal, "PV_STATUS_GOAL"),
        ("restart_policy", restart_policy, "PV_RESTART_POLICY"),
    ):
        if value:
            run[key] = value
            src["args"][arg] = value
    entries[f"{name}/run.json"] = run
    entries[f"{name}/src.json"] = src
    return entries


# --------------------------------------------------------------------------------------------
# add-bsp


def build_bsp(
    *,
    kernel: Path,
    initrd: Path,
    objects: ObjectStore,
    modules: Path | None = None,
    fdt: Path | None = None,
    cmdline: str | None = None,
) -> dict[str, Any]:
    for flag, path in (("--kernel", kernel), ("--initrd", initrd), ("--fdt", fdt)):
        if path is not None and not path.is_file():
            raise InvalidState("file not found", source=str(path), key=flag)
    if modules is not None and not modules.exists():
        raise InvalidState(
            "modules folder or squashfs not found", source=str(modules), key="--modules"
        )
    objects.dir.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {
        "bsp/kernel.img": objects.add_file(kernel),
        "bsp/pantavisor": objects.add_file(initrd),
    }
    run: dict[str, Any] = {"addons": [], "initrd": "pantavisor", "linux": "kernel.img"}
    if modules is not None:
        if modules.is_dir():
            with tempfile.TemporaryDirectory(dir=objects.dir, prefix=".build-") as tmp:
                image = Path(tmp) / "modules.squashfs"
                squashfs.make_squashfs(modules, image)
                entries["bsp/modules.squashfs"] = objects.adopt_file(image)
        else:
            entries["bsp/modules.squashfs"] = objects.add_file(modules)
        run["modules"] = "modules.squashfs"
    if fdt is not None:
        entries["bsp/pv.dtb"] = objects.add_file(fdt)
        run["fdt"] = "pv.dtb"
    if cmdline:
        run["cmdline"] = cmdline
    entries["bsp/run.json"] = run
    entries["bsp/src.json"] = {"#spec": BSP_SRC_SPEC, "pvtwin": "pvreal rev add-bsp"}
    return entries
