"""`pvreal rev add-container` and `pvreal rev add-bsp`: build revision parts from files.

The builds are pvreal.rev.build's (see there for what each writes). Objects go to `--objects DIR`
(default: `objects/` beside the state file). The state is written once, canonical and
atomically, after every object is in place; bad input changes nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pvreal.objectstore import ObjectStore
from pvreal.rev.build import (
    ROOT_VOLUME,
    build_bsp,
    build_container,
    load_state,
    replace_part,
    save_state,
)
from shared.state import RestartPolicy, StatusGoal


def register(verbs: argparse._SubParsersAction) -> None:
    add = verbs.add_parser(
        "add-container",
        help="add or replace a container built from a rootfs folder or an OCI image",
        description="Pack a root filesystem into a squashfs object and add the container's part "
        "(run.json, lxc.container.conf, src.json) to STATE.",
    )
    add.add_argument(
        "state", metavar="STATE", type=Path, help="state JSON file (created if missing)"
    )
    add.add_argument("name", metavar="NAME", help="container name")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--rootfs", metavar="DIR", type=Path, help="root filesystem folder")
    source.add_argument("--oci", metavar="TARBALL", type=Path, help="OCI layout or docker save tar")
    add.add_argument("--group", metavar="G", help="group (data, root, platform, app, ...)")
    add.add_argument("--status-goal", metavar="G", choices=[g.value for g in StatusGoal])
    add.add_argument("--restart-policy", metavar="P", choices=[p.value for p in RestartPolicy])
    add.add_argument(
        "--init", metavar="CMD", help="init command (default: the image's, else /sbin/init)"
    )
    add.add_argument(
        "--persistence",
        choices=["boot", "revision", "permanent"],
        default="boot",
        help="where the rootfs overlay's upper dir lives (default boot: a tmpfs)",
    )
    add.add_argument("--memory-limit", metavar="BYTES", type=int, help="cgroup memory limit")
    add.add_argument("--pids-limit", metavar="N", type=int, help="cgroup pids limit")
    add.add_argument("--verity", action="store_true", help="add a dm-verity hash tree (dm: volume)")
    add.add_argument("--objects", metavar="DIR", type=Path, help="objects folder")
    add.set_defaults(func=add_container_command)

    bsp = verbs.add_parser(
        "add-bsp",
        help="add or replace the BSP: kernel, initrd, modules, fdt",
        description="Add kernel, initrd (pantavisor), modules and fdt objects and bsp/run.json.",
    )
    bsp.add_argument(
        "state", metavar="STATE", type=Path, help="state JSON file (created if missing)"
    )
    bsp.add_argument("--kernel", metavar="F", type=Path, required=True)
    bsp.add_argument("--initrd", metavar="F", type=Path, required=True)
    bsp.add_argument("--modules", metavar="DIR|SQUASHFS", type=Path)
    bsp.add_argument("--fdt", metavar="F", type=Path)
    bsp.add_argument(
        "--cmdline", metavar="ARGS", help="extra kernel command line (pvtwin extension)"
    )
    bsp.add_argument("--objects", metavar="DIR", type=Path, help="objects folder")
    bsp.set_defaults(func=add_bsp_command)


def _objects(args: argparse.Namespace) -> ObjectStore:
    return ObjectStore(args.objects or args.state.resolve().parent / "objects")


def add_container_command(args: argparse.Namespace) -> int:
    state = load_state(args.state)  # read first: a bad state file stops us before any build
    entries = build_container(
        args.name,
        rootfs=args.rootfs,
        oci_image=args.oci,
        objects=_objects(args),
        group=args.group,
        status_goal=args.status_goal,
        restart_policy=args.restart_policy,
        init=args.init,
        persistence=args.persistence,
        memory_limit=args.memory_limit,
        pids_limit=args.pids_limit,
        verity=args.verity,
    )
    save_state(args.state, replace_part(state, f"{args.name}/", entries))
    print(f"{args.name}: root.squashfs {entries[f'{args.name}/{ROOT_VOLUME}']}")
    return 0


def add_bsp_command(args: argparse.Namespace) -> int:
    state = load_state(args.state)
    entries = build_bsp(
        kernel=args.kernel,
        initrd=args.initrd,
        objects=_objects(args),
        modules=args.modules,
        fdt=args.fdt,
        cmdline=args.cmdline,
    )
    save_state(args.state, replace_part(state, "bsp/", entries))
    print(f"bsp: kernel.img {entries['bsp/kernel.img']}")
    return 0
