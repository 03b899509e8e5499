"""`pvreal rev show STATE` and `pvreal rev diff OLD NEW`: read a revision, print what it holds.

STATE is a state JSON file, `-` for stdin, or a trail directory holding `.pvr/json`. Exit codes
follow shared.errors: 0 ok, 1 invalid input (the error names the file and the key), 2 usage.
Signatures are only decoded for display here; `pvreal rev verify` checks them. Reading is
pvreal.rev.read's, the view pvreal.rev.view's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pvreal.rev.read import read_state
from pvreal.rev.view import show_json
from shared.diff import StateDiff, diff_states
from shared.errors import PvError
from shared.state import AutoRecovery, State


def register(verbs: argparse._SubParsersAction) -> None:
    show = verbs.add_parser(
        "show",
        help="containers, groups, goals, objects and signatures of a revision",
        description="Show what a revision (state JSON) holds, as Pantavisor's parser reads it.",
    )
    show.add_argument(
        "state", metavar="STATE", help="state JSON file, trail directory, or - for stdin"
    )
    show.add_argument(
        "--objects", metavar="DIR", type=Path, help="objects directory to check sizes"
    )
    _common(show)
    show.set_defaults(func=show_command)

    diff = verbs.add_parser(
        "diff",
        help="what changed between two revisions and whether Pantavisor would reboot",
        description="Compare two revisions and name the transition Pantavisor would choose.",
    )
    diff.add_argument("old", metavar="OLD", help="state JSON file, trail directory, or -")
    diff.add_argument("new", metavar="NEW", help="state JSON file, trail directory, or -")
    _common(diff)
    diff.set_defaults(func=diff_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--partial",
        action="store_true",
        help="accept packages and states without a BSP (pvtx packages)",
    )


# ---- commands


def _console() -> Console:
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)


def show_command(args: argparse.Namespace) -> int:
    state = read_state(args.state, partial=args.partial)
    if args.objects is not None and not args.objects.is_dir():
        raise PvError("not a directory", source=str(args.objects))
    source = "<stdin>" if args.state == "-" else args.state
    view = show_json(state, args.objects, source)
    if args.json:
        print(json.dumps(view, indent=2, sort_keys=True))
        return 0
    console = _console()
    mode = "runlevel mode (default groups)" if state.runlevel_mode else "groups from the state"
    console.print(f"[bold]{state.spec}[/bold]  {len(state.entries)} entries, {mode}")
    if state.bsp is not None:
        assets = ", ".join(f"{k}={v}" for k, v in view["bsp"].items() if v and k != "addons")
        console.print(f"BSP: {assets}")
    console.print(_groups_table(state))
    console.print(_containers_table(state))
    objects = view["objects"]
    line = f"Objects: {objects['entries']} entries, {objects['distinct']} distinct"
    if "present" in objects:
        line += (
            f"; in {args.objects}: {objects['present']} present, {objects['missing']} missing, "
            f"{objects['size']} bytes"
        )
    console.print(line)
    if view["signatures"]:
        console.print(_signatures_table(view["signatures"]))
    else:
        console.print("Signatures: none")
    return 0


def diff_command(args: argparse.Namespace) -> int:
    if args.old == "-" and args.new == "-":
        raise PvError("only one of OLD and NEW can be read from stdin")
    old = read_state(args.old, partial=args.partial)
    new = read_state(args.new, partial=args.partial)
    result = diff_states(old, new)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    _print_diff(result)
    return 0


# ---- tables


def _recovery_text(ar: AutoRecovery | None) -> str:
    if ar is None or ar.policy == "no":
        return "no"
    return f"{ar.policy} ×{ar.max_retries} ({ar.retry_delay:g}s ×{ar.backoff_factor:g}, then {ar.backoff_policy})"


def _groups_table(state: State) -> Table:
    table = Table(title="Groups (start order)")
    for column in ("group", "status goal", "restart policy", "timeout", "auto recovery"):
        table.add_column(column)
    for g in state.groups:
        timeout = f"{g.timeout}s" if g.timeout is not None else "default (PV_UPDATER_GOALS_TIMEOUT)"
        table.add_row(
            g.name, g.status_goal, g.restart_policy, timeout, _recovery_text(g.auto_recovery)
        )
    return table


def _containers_table(state: State) -> Table:
    table = Table(title="Containers (start order)")
    for column in (
        "container",
        "group",
        "status goal",
        "restart policy",
        "auto recovery",
        "root volume",
        "storage",
    ):
        table.add_column(column)
    for c in state.containers:
        group = c.group if c.explicit_group else f"{c.group} (default)"
        root = (c.root_volume or "-") + (" (dm-verity)" if c.verity else "")
        storage = ", ".join(f"{k}:{v}" for k, v in sorted(c.storage.items())) or "-"
        table.add_row(
            c.name,
            group,
            c.status_goal,
            c.restart_policy,
            _recovery_text(c.auto_recovery),
            root,
            storage,
        )
    return table


def _signatures_table(rules: list[dict[str, Any]]) -> Table:
    table = Table(title="Signatures (decoded, not verified)")
    for column in ("name", "alg", "include", "exclude"):
        table.add_column(column)
    for rule in rules:
        table.add_row(
            rule["name"],
            str(rule["alg"]),
            "\n".join(rule["include"]),
            "\n".join(rule["exclude"]),
        )
    return table


def _print_diff(result: StateDiff) -> None:
    console = _console()
    console.print(f"[bold]transition: {result.transition}[/bold]")
    for reason in result.reasons:
        console.print(f"  - {reason}")
    if result.containers:
        console.print("containers affected: " + ", ".join(result.containers))
    table = Table(title="Entries")
    table.add_column("change")
    table.add_column("key")
    for label, keys in (
        ("added", result.added),
        ("removed", result.removed),
        ("changed", result.changed),
    ):
        for key in keys:
            table.add_row(label, key)
    console.print(table)
