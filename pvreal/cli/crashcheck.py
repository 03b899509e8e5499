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
    KIND_COLUMNS,
    CrashReport,
    as_expected,
    both_to_json,
    kind_rows,
    shown_violations,
    summary_line,
    verdict_line,
    window_rows,
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
            "are stand-ins (no root needed); the files are real. hub-unreachable-testing "
            "takes its update from a real Hub served on 127.0.0.1 by this command, through the "
            "daemon's own Hub client (remote mode). Without --ordering both "
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
    """pvsim crashcheck's table, violations and summary line, for the real daemon."""
    table = Table(title=f"pvreal crashcheck — ordering {report.ordering}, latch {report.latch}")
    for column in KIND_COLUMNS:
        table.add_column(column.replace("cut", "kill"), justify="left" if column in ("kind", "without a cut") else "right")
    for *head, count, reference, seconds in kind_rows(report):
        table.add_row(*head, f"[red]{count}[/red]" if count != "0" else "0", reference, seconds)
    console.print(table)
    for window, kind, violation in shown_violations(report, every=every_violation):
        console.print(f"[red]{window} {kind}[/red]: {violation}", highlight=False)
    console.print(summary_line(report), highlight=False)


def print_summary(reports: list[CrashReport], console: Console) -> None:
    table = Table(title="pvreal crashcheck — both orderings")
    for column in ("window", "C function", *(r.ordering for r in reports)):
        table.add_column(column, justify="left" if column in ("window", "C function") else "right")
    for row in window_rows(reports):
        table.add_row(*row)
    console.print(table)
    for r in reports:
        console.print(verdict_line(r, "as expected", "[red]NOT as expected[/red]"), highlight=False)
