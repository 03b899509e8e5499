"""`pvreal rev show STATE` and `pvreal rev diff OLD NEW`: read a revision, print what it holds.

STATE is a state JSON file, `-` for stdin, or a trail directory holding `.pvr/json`. Exit codes
follow shared.cli_support: 0 ok, 1 invalid input (the error names the file and the key), 2 usage.
Signatures are only decoded for display here; `pvreal rev verify` checks them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from shared import canonical
from shared.diff import StateDiff, diff_states
from shared.errors import InvalidJson, InvalidState, PvError, SignatureError
from shared.signatures import b64url_decode
from shared.state import AutoRecovery, Container, Group, State, parse_state


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


# ---- reading


def read_state_bytes(spec: str) -> tuple[bytes, str]:
    """The bytes of STATE and the name to report: a file, a trail directory (its .pvr/json) or
    `-` for stdin."""
    if spec == "-":
        return sys.stdin.buffer.read(), "<stdin>"
    path = Path(spec)
    if path.is_dir():
        for candidate in (path / ".pvr" / "json", path / "json"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise InvalidState("directory holds neither .pvr/json nor json", source=spec)
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise InvalidJson(f"cannot read: {exc.strerror}", source=spec) from None


def read_state(spec: str, *, partial: bool = False) -> State:
    """Parse STATE (see read_state_bytes)."""
    data, source = read_state_bytes(spec)
    return parse_state(data, source=source, partial=partial)


def signature_rules(state: State, source: str | None = None) -> list[dict[str, Any]]:
    """Name, algorithm and include/exclude globs of each `_sigs/*.json` (decoded, not verified)."""
    rules = []
    for key, sig in sorted(state.signatures.items()):
        header = _protected_header(key, sig, source)
        pvs = header.get("pvs") if isinstance(header.get("pvs"), dict) else {}
        rules.append(
            {
                "name": key[len("_sigs/") : -len(".json")],
                "key": key,
                "spec": sig.get("#spec"),
                "alg": header.get("alg"),
                "include": list(pvs.get("include", [])),
                "exclude": list(pvs.get("exclude", [])),
            }
        )
    return rules


def _protected_header(key: str, sig: Any, source: str | None) -> dict[str, Any]:
    """The decoded header, with shared.signatures' base64url rule; not verified (`rev verify`
    does that), so a header `parse_signature` would refuse is still shown."""
    protected = sig.get("protected")
    if not isinstance(protected, str):
        raise InvalidState("signature has no 'protected' header string", source=source, key=key)
    try:
        header = canonical.loads(b64url_decode(protected, what="protected header", key=key))
    except (SignatureError, InvalidJson) as exc:
        raise InvalidState(
            f"'protected' is not base64url-encoded JSON ({exc.message})", source=source, key=key
        ) from None
    if not isinstance(header, dict):
        raise InvalidState("'protected' header is not a JSON object", source=source, key=key)
    return header


def object_summary(state: State, objects_dir: Path | None) -> dict[str, Any]:
    shas = state.object_shas()
    summary: dict[str, Any] = {"entries": len(state.objects), "distinct": len(shas)}
    if objects_dir is not None:
        present = [objects_dir / sha for sha in sorted(shas) if (objects_dir / sha).is_file()]
        summary["present"] = len(present)
        summary["missing"] = len(shas) - len(present)
        summary["size"] = sum(p.stat().st_size for p in present)
    return summary


# ---- JSON views


def _recovery_json(ar: AutoRecovery | None) -> dict[str, Any] | None:
    if ar is None:
        return None
    return {
        "policy": ar.policy,
        "max_retries": ar.max_retries,
        "retry_delay": ar.retry_delay,
        "backoff_factor": ar.backoff_factor,
        "reset_window": ar.reset_window,
        "stable_timeout": ar.stable_timeout,
        "backoff_policy": ar.backoff_policy,
    }


def _group_json(g: Group) -> dict[str, Any]:
    return {
        "name": g.name,
        "status_goal": g.status_goal.value,
        "restart_policy": g.restart_policy.value,
        "timeout": g.timeout,
        "auto_recovery": _recovery_json(g.auto_recovery),
    }


def _container_json(c: Container) -> dict[str, Any]:
    return {
        "name": c.name,
        "group": c.group,
        "explicit_group": c.explicit_group,
        "status_goal": c.status_goal.value,
        "restart_policy": c.restart_policy.value,
        "auto_recovery": _recovery_json(c.auto_recovery),
        "storage": {k: v.value for k, v in sorted(c.storage.items())},
        "root_volume": c.root_volume,
        "verity": c.verity,
        "roles": list(c.roles),
        "volumes": list(c.volumes),
    }


def show_json(
    state: State, objects_dir: Path | None = None, source: str | None = None
) -> dict[str, Any]:
    bsp = state.bsp
    return {
        "spec": state.spec,
        "digest": state.digest,
        "partial": state.partial,
        "runlevel_mode": state.runlevel_mode,
        "bsp": None
        if bsp is None
        else {
            "linux": bsp.linux,
            "initrd": bsp.initrd,
            "fdt": bsp.fdt,
            "fit": bsp.fit,
            "rpiab": bsp.rpiab,
            "modules": bsp.modules,
            "firmware": bsp.firmware,
            "addons": list(bsp.addons),
            "initrd_config": bsp.initrd_config,
        },
        "groups": [_group_json(g) for g in state.groups],
        "containers": [_container_json(c) for c in state.containers],
        "objects": object_summary(state, objects_dir),
        "signatures": signature_rules(state, source),
    }


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
