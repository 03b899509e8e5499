"""`pvreal crashcheck`: kill the real daemon at every durable step of an update, restart it on the
same storage folder and check the invariants (library: pvreal.crashcheck)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pvreal.crashcheck.kinds import LEFT_OUT, kinds
from pvreal.crashcheck.runner import crashcheck
from shared.engine.config import Ordering
from shared.engine.invariants import (
    WINDOWS,
    CrashReport,
    as_expected,
    both_to_json,
    by_window,
    summary_line,
    window_of,
)
from shared.errors import EXIT_INVALID, EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    names = list(kinds())
    parser = subparsers.add_parser(
        "crashcheck",
        help="kill the real daemon at every durable step of an update; check invariants",
        description=(
            "pvsim crashcheck's update kinds on real storage folders: for each kind, record the "
            "durable steps of a full update, then for every step kill the daemon right before it "
            "(and inside it when it is tearable), restart it on the same folder, run to "
            "quiescence and check the same invariants; again during the recovery. Containers "
            "are stand-ins (no root needed); the files are real. Without --ordering both "
            "orderings run, and the exit status is pvsim crashcheck's. Left out (the real "
            "daemon cannot run them here): " + ", ".join(LEFT_OUT) + "."
        ),
    )
    parser.add_argument(
        "--ordering",
        choices=[o.value for o in Ordering],
        default=None,
        help="only this write ordering (default: both, faithful then hardened)",
    )
    parser.add_argument(
        "--kind",
        action="append",
        choices=names,
        metavar="K",
        help="update kind (repeatable): " + ", ".join(names),
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    parser.add_argument(
        "--no-second-sweep", action="store_true", help="skip the kills during the recovery"
    )
    parser.add_argument(
        "--work", type=Path, metavar="DIR",
        help="keep the storage folders here (default: a temporary folder, removed afterwards)",
    )
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    orderings = [Ordering(args.ordering)] if args.ordering else [Ordering.FAITHFUL, Ordering.HARDENED]
    console = Console()
    reports = []
    for ordering in orderings:
        report = crashcheck(
            ordering, args.kind, second_sweep=not args.no_second_sweep, work=args.work,
            progress=lambda k: console.print(
                f"{k.kind}: {k.crash_points} crash points, {len(k.violations)} violations, "
                f"{k.seconds:.1f} s", highlight=False,
            ),
        )
        print_report(report, console, every_violation=len(orderings) == 1)
        reports.append(report)
    if len(reports) > 1:
        print_summary(reports, console)
    if args.json:
        doc = reports[0].to_json() if len(reports) == 1 else both_to_json(reports)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if len(reports) == 1:
        return EXIT_INVALID if reports[0].violation_count else EXIT_OK
    return EXIT_OK if all(map(as_expected, reports)) else EXIT_INVALID


def print_report(report: CrashReport, console: Console, *, every_violation: bool = True) -> None:
    """pvsim crashcheck's table and summary line, for the real daemon."""
    table = Table(title=f"pvreal crashcheck — ordering {report.ordering}, latch {report.latch}")
    for column in ("kind", "durable steps", "crash points", "old", "new", "violations"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    table.add_column("without a kill")
    table.add_column("s", justify="right")
    for k in report.kinds.values():
        table.add_row(
            k.kind, str(len(k.steps)), str(k.crash_points), str(k.outcomes.get("old", 0)),
            str(k.outcomes.get("new", 0)),
            f"[red]{len(k.violations)}[/red]" if k.violations else "0", k.reference,
            f"{k.seconds:.2f}",
        )
    console.print(table)
    shown: set[str] = set()
    for k in report.kinds.values():
        for violation in k.violations:
            window = window_of(violation)
            if every_violation or window not in shown:
                shown.add(window)
                console.print(f"[red]{window} {k.kind}[/red]: {violation}", highlight=False)
    console.print(summary_line(report), highlight=False)


def print_summary(reports: list[CrashReport], console: Console) -> None:
    table = Table(title="pvreal crashcheck — both orderings")
    table.add_column("window")
    table.add_column("C function")
    for r in reports:
        table.add_column(r.ordering, justify="right")
    for w in WINDOWS:
        table.add_row(f"{w.name} {w.title}", w.c_function, *(str(r.windows.get(w.name, 0)) for r in reports))
    table.add_row("unnamed", "", *(str(r.windows.get("unnamed", 0)) for r in reports))
    table.add_row("crash points", "", *(str(r.total_crash_points) for r in reports))
    console.print(table)
    for r in reports:
        verdict = "as expected" if as_expected(r) else "[red]NOT as expected[/red]"
        console.print(
            f"{r.ordering}: {r.total_crash_points} crash points, {r.violation_count} violations"
            f"{by_window(r)} — {verdict}",
            highlight=False,
        )
