"""`pvreal ctl`: talk to a running device over its pv-ctrl socket (like Pantavisor's pvcontrol).

The command `ctl` (pvcontrol's verb) fronts pvreal/ctrl/, the pv-ctrl protocol: server and client.

    put STATE REV [--objects DIR]   upload missing objects, then the state as REV (locals/<name>)
    run REV | run-commit REV        LOCAL_RUN / LOCAL_RUN_COMMIT
    status | containers             what runs (pvtwin's /status; pv-ctrl's /containers)
    progress REV                    the progress record of REV
    wait REV --until S [--timeout]  poll until REV reaches final status S (or ends otherwise)
    reboot | gc                     REBOOT_DEVICE / RUN_GC
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pvreal.ctrl.client import FINAL, CtrlClient, CtrlError
from pvreal.ctrl.upload import upload_revision
from pvreal.objectstore import ObjectStore
from shared.engine.progress import Status, statuses_ending_wait


def register(subparsers: argparse._SubParsersAction) -> None:
    ctl = subparsers.add_parser(
        "ctl",
        help="talk to a running device over its control socket",
        description="Talk to a running device over its pv-ctrl socket (the library is pvreal/ctrl/).",
    )
    ctl.add_argument("--socket", type=Path, required=True, metavar="PATH")
    ctl.add_argument("--json", action="store_true", help="print JSON")
    verbs = ctl.add_subparsers(dest="verb", metavar="VERB", required=True)

    put = verbs.add_parser("put", help="upload objects and a state as a local revision")
    put.add_argument("state", type=Path, metavar="STATE")
    put.add_argument("rev", metavar="REV", help="locals/<name>")
    put.add_argument("--objects", type=Path, metavar="DIR", help="default: objects/ beside STATE")
    put.set_defaults(func=put_command)
    for verb, op in (("run", "LOCAL_RUN"), ("run-commit", "LOCAL_RUN_COMMIT")):
        p = verbs.add_parser(verb, help=op)
        p.add_argument("rev", metavar="REV")
        p.set_defaults(func=command_command, op=op)
    for verb, op in (("reboot", "REBOOT_DEVICE"), ("gc", "RUN_GC")):
        p = verbs.add_parser(verb, help=op)
        p.set_defaults(func=command_command, op=op, rev="")
    verbs.add_parser("status", help="running revision, phase, boot env").set_defaults(
        func=status_command
    )
    verbs.add_parser("containers", help="containers and their status").set_defaults(
        func=containers_command
    )
    prog = verbs.add_parser("progress", help="progress record of a revision")
    prog.add_argument("rev", metavar="REV")
    prog.set_defaults(func=progress_command)
    wait = verbs.add_parser("wait", help="wait until a revision reaches a status")
    wait.add_argument("rev", metavar="REV")
    wait.add_argument("--until", required=True, choices=FINAL,  # every final status
                      help="a final status: " + ", ".join(FINAL))
    wait.add_argument("--timeout", type=float, default=120.0, metavar="S")
    wait.set_defaults(func=wait_command)


def _client(args: argparse.Namespace) -> CtrlClient:
    return CtrlClient(args.socket)


def _print(args: argparse.Namespace, doc: Any, text: str) -> None:
    print(json.dumps(doc, indent=1, sort_keys=True) if args.json else text)


def put_command(args: argparse.Namespace) -> int:
    objects = ObjectStore(args.objects or args.state.resolve().parent / "objects")
    data = args.state.read_bytes()
    uploaded = upload_revision(_client(args), args.rev, data, objects, str(args.state))
    _print(args, {"rev": args.rev, "uploaded": uploaded}, f"{args.rev}: {uploaded} objects sent")
    return 0


def command_command(args: argparse.Namespace) -> int:
    answer = _client(args).command(args.op, args.rev)
    if not answer.ok:
        retry = answer.headers.get("Retry-After")
        detail = f" (Retry-After {retry})" if retry else ""
        raise CtrlError(f"{args.op}: {answer.status} {answer.error}{detail}")
    _print(args, answer.json(), f"{args.op} {args.rev}".strip() + ": accepted")
    return 0


def status_command(args: argparse.Namespace) -> int:
    s = _client(args).status()
    doing = f"{s.get('phase')}: {s['activity']}" if s.get("activity") else s.get("phase")
    text = (
        f"running {s.get('running')} ({doing}), booted {s.get('booted')}, "
        f"pv_rev={s.get('pv_rev')} pv_try={s.get('pv_try')}, boots {s.get('boots')}"
    )
    if s.get("update"):
        text += f", updating to {s['update']}"
    _print(args, s, text)
    return 0


def containers_command(args: argparse.Namespace) -> int:
    items = _client(args).containers()
    lines = [
        f"{c['name']:<16} {c['group']:<10} {c['status']:<10} goal {c['status_goal']:<8} "
        f"pid {c.get('pid')} {c.get('address') or ''}"
        for c in items
    ]
    _print(args, items, "\n".join(lines) or "(no containers)")
    return 0


def progress_command(args: argparse.Namespace) -> int:
    record = _client(args).progress(args.rev)
    if record is None:
        raise CtrlError(f"no progress for {args.rev}", source=str(args.socket))
    _print(args, record, f"{record['status']} {record['progress']}% {record['status-msg']}")
    return 0


def wait_command(args: argparse.Namespace) -> int:
    ending = statuses_ending_wait(Status(args.until))
    record = _client(args).wait(
        args.rev, tuple(s.value for s in Status if s in ending), args.timeout
    )
    status = record.get("status") if record else None
    _print(args, record, f"{args.rev}: {status} {record.get('status-msg') if record else ''}")
    if status != args.until:
        why = f"it ended {status}" if status in FINAL else f"last: {status}, timeout"
        print(f"pvreal: {args.rev} did not reach {args.until} ({why})", file=sys.stderr)
        return 1
    return 0
