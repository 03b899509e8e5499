"""`pvreal tx ...`: pvtx's commands on a transaction folder (`--txdir`, else $PVTXDIR).

Exit statuses are pvtx's, not the project-wide 0/1/2 (see docs/pvtx.md): 0 ok; 1 add without a
transaction or a missing queue; 3 remove without a transaction; 4 remove without a part; 11 show,
commit or deploy without a transaction; 12 commit on a local transaction or queue new while one
is active; 255 everything else. Usage errors found by argparse still exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from pvreal.tx import EXIT_FAILED, SOCKET_ENV, ControlClient, TxFolder, resolve_txdir
from shared.errors import PvError

DESCRIPTION = """\
pvtx-style transactions: build a new revision from a base state by adding packages and removing
parts, then deploy it to a folder (local transaction) or commit it to a device (remote).

  pvreal tx begin empty OBJECTS      local transaction from an empty state
  pvreal tx begin STATE.json         remote transaction from a state file (or `current`)
  pvreal tx add PACKAGE.json|.tar|.tgz|-
  pvreal tx remove PART              a signed package by name, _sigs/NAME.json or _config/NAME
  pvreal tx show                     the state being built (canonical JSON)
  pvreal tx deploy DIR | commit [locals/NAME] | abort
  pvreal tx queue new QUEUE OBJECTS | remove PART | unpack FILE|- | process [BASE [QUEUE OBJECTS]]
"""

Handler = Callable[[TxFolder, argparse.Namespace], int | None]


def _common() -> argparse.ArgumentParser:
    # Accepted before or after the verb; SUPPRESS keeps a verb from overwriting the group's value.
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--txdir", default=argparse.SUPPRESS,
                        help="transaction folder (default: $PVTXDIR, else pvtx's default)")
    parent.add_argument("--socket", default=argparse.SUPPRESS,
                        help=f"pv-ctrl socket for `current`, commit and remote objects "
                             f"(default: ${SOCKET_ENV}, else Pantavisor's usual paths)")
    return parent


def register(subparsers: argparse._SubParsersAction) -> None:
    tx = subparsers.add_parser(
        "tx", parents=[_common()], help="pvtx-style transactions: begin, add, remove, deploy, commit",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tx.set_defaults(func=_run, txdir=None, socket=None)
    verbs = tx.add_subparsers(dest="tx_verb", metavar="VERB", required=True)

    def verb(name: str, handler: Handler, help_text: str, parent=verbs) -> argparse.ArgumentParser:
        # A fresh parent each time: argparse shares action objects between parsers built from the
        # same parent, and tx's set_defaults would then leak into every verb.
        parser = parent.add_parser(name, parents=[_common()], help=help_text,
                                   description=help_text)
        parser.set_defaults(tx_handler=handler, tx_label=name)
        return parser

    begin = verb("begin", _begin, "start a transaction from BASE (current, empty, file, folder)")
    begin.add_argument("base", nargs="?", help="`current` (default), `empty` or a state path")
    begin.add_argument("objdir", nargs="?", help="objects directory: makes the transaction local")
    add = verb("add", _add, "merge a package (JSON, tar or tar.gz with objects/; - = stdin)")
    add.add_argument("package", nargs="?")
    remove = verb("remove", _remove, "remove a part and everything its signature owns")
    remove.add_argument("part", nargs="?")
    verb("show", _show, "print the state being built")
    verb("abort", _abort, "drop the transaction")
    commit = verb("commit", _commit, "send a remote transaction to the device as a new revision")
    commit.add_argument("name", nargs="?", help="revision name, locals/...")
    deploy = verb("deploy", _deploy, "lay out a local transaction's revision in DIR")
    deploy.add_argument("dir", nargs="?")

    queue = verb("queue", _queue_usage, "record steps now, replay them later onto a base")
    queue_verbs = queue.add_subparsers(dest="queue_verb", metavar="QUEUE_VERB", required=True)
    new = verb("new", _queue_new, "start a queue", queue_verbs)
    new.add_argument("queue", nargs="?")
    new.add_argument("objdir", nargs="?")
    qremove = verb("remove", _queue_remove, "queue a remove step", queue_verbs)
    qremove.add_argument("part", nargs="?")
    unpack = verb("unpack", _queue_unpack, "queue a package (its objects go to OBJECTS now)",
                  queue_verbs)
    unpack.add_argument("package", nargs="?")
    process = verb("process", _queue_process, "apply the queued steps to the transaction",
                   queue_verbs)
    process.add_argument("base", nargs="?", help="begin from BASE first")
    process.add_argument("queue", nargs="?", help="with OBJECTS: run `queue new` first")
    process.add_argument("objdir", nargs="?")


def _run(args: argparse.Namespace) -> int:
    label = "queue " + args.tx_label if getattr(args, "queue_verb", None) else args.tx_label
    try:
        socket_path = args.socket or os.environ.get(SOCKET_ENV) or None
        folder = TxFolder(resolve_txdir(args.txdir), control=ControlClient(socket_path))
        return int(args.tx_handler(folder, args) or 0)
    except PvError as exc:
        print(f"pvreal tx {label}: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_FAILED))


def _begin(folder: TxFolder, args: argparse.Namespace) -> None:
    folder.begin(args.base, args.objdir)


def _add(folder: TxFolder, args: argparse.Namespace) -> None:
    folder.add(args.package)


def _remove(folder: TxFolder, args: argparse.Namespace) -> None:
    folder.remove(args.part)


def _show(folder: TxFolder, args: argparse.Namespace) -> None:
    sys.stdout.write(folder.show().decode("utf-8") + "\n")
    sys.stdout.flush()


def _abort(folder: TxFolder, args: argparse.Namespace) -> None:
    folder.abort()


def _commit(folder: TxFolder, args: argparse.Namespace) -> None:
    print(folder.commit(args.name))


def _deploy(folder: TxFolder, args: argparse.Namespace) -> None:
    for warning in folder.deploy(args.dir):
        print(f"WARN: {warning}")


def _queue_usage(folder: TxFolder, args: argparse.Namespace) -> int:  # pragma: no cover
    return EXIT_FAILED  # argparse requires a queue verb, so this never runs


def _queue_new(folder: TxFolder, args: argparse.Namespace) -> None:
    folder.queue_new(args.queue, args.objdir)


def _queue_remove(folder: TxFolder, args: argparse.Namespace) -> None:
    folder.queue_remove(args.part)


def _queue_unpack(folder: TxFolder, args: argparse.Namespace) -> None:
    folder.queue_unpack(args.package)


def _queue_process(folder: TxFolder, args: argparse.Namespace) -> None:
    folder.queue_process(args.base, args.queue, args.objdir)
