"""`TxFolder`: pvtx's commands on one transaction folder: begin, abort, show, add, remove,
commit (remote), deploy (local) and the queue verbs (`pvreal.tx.queue`).

Every input is checked before anything changes, and a failing command leaves the folder and the
objects directory as they were. Every command starts by finishing a deploy that a crash cut
short (`pvreal.tx.deploy`).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from pvreal import safetar
from pvreal.durable import fsync_dir
from pvreal.tx.control import ControlClient
from pvreal.tx.deploy import (
    close_journal,
    crash_point,
    deploy_revision,
    open_journal,
    recover_journaled,
)
from pvreal.tx.errors import (
    EXIT_NO_PART,
    EXIT_NO_TX_ADD,
    EXIT_NO_TX_REMOVE,
    EXIT_NOT_ACTIVE,
    EXIT_WRONG_KIND,
    TxError,
)
from pvreal.tx.packages import install_objects, read_package
from pvreal.tx.queue import TxQueue
from pvreal.tx.record import TxFiles, TxRecord, TxStatus, absolute
from shared.transaction import (
    State,
    apply_package,
    check_revision,
    dump_state,
    empty_state,
    parse_document,
    remove_part,
)


class TxFolder(TxFiles):
    """One pvtx transaction folder. Methods mirror pvtx's commands and raise `TxError`."""

    def __init__(self, path: Path, *, control: ControlClient | None = None,
                 limits: safetar.Limits = safetar.DEFAULT_LIMITS):
        super().__init__(path)
        self.control = control or ControlClient()
        self.limits = limits
        self.queue = TxQueue(self)

    def open_record(self) -> TxRecord | None:
        """The record, once an interrupted deploy has been put right."""
        recover_journaled(self.path)
        return self.record()

    def require_active(self, exit_code: int) -> TxRecord:
        record = self.open_record()
        if record is None or not record.active:
            raise TxError("no active transaction; run 'begin' first", exit_code=exit_code)
        return record

    # ---- begin / abort / show

    def resolve_base(self, base: str | None) -> State:
        """The starting state: `current` (from pv-ctrl), `empty`, a revision folder or a file."""
        if base is None or base.startswith("current"):  # prefix tests as in pvtx
            source = "pv-ctrl /steps/current"
            document = parse_document(self.control.current_state(), source=source)
        elif base.startswith("empty"):
            return empty_state()
        else:
            path = Path(base)
            if path.is_dir():
                path = path / "json" if (path / "json").is_file() else path / ".pvr" / "json"
            if not path.is_file():
                raise TxError(f"no state JSON found at '{base}'; expected a revision directory "
                              "or a json file")
            source = str(path)
            document = parse_document(path.read_bytes(), source=source)
        check_revision(document, source=source)
        return document

    def begin(self, base: str | None = None, objdir: str | None = None) -> None:
        record = self.open_record()
        if record is not None and record.active:
            raise TxError("a transaction is already in progress; commit, deploy or abort it")
        state = self.resolve_base(base)  # checked before anything is wiped
        if record is not None and record.status is TxStatus.SET and record.queue is not None:
            # A queue is waiting: keep it; its objects directory wins over the argument.
            record = replace(record, status=TxStatus.ACTIVE, is_local=True)
        else:
            self.wipe()
            record = TxRecord(TxStatus.ACTIVE, is_local=objdir is not None,
                              objdir=absolute(objdir))
        self.write_state(state)
        self.write_record(record)

    def abort(self) -> None:
        record = self.open_record()
        if record is None:
            return
        missing_current = False
        try:
            self.current_path.unlink()
        except FileNotFoundError:
            missing_current = record.active
        self.status_path.unlink(missing_ok=True)
        fsync_dir(self.path)
        if missing_current:
            raise TxError("couldn't delete current json file: it does not exist",
                          source=str(self.current_path))

    def show(self) -> bytes:
        self.require_active(EXIT_NOT_ACTIVE)
        try:
            return self.current_path.read_bytes()
        except FileNotFoundError:
            raise TxError("the transaction has no current.json",
                          source=str(self.current_path)) from None

    def state(self) -> State:
        self.require_active(EXIT_NOT_ACTIVE)
        return self.load_state()

    # ---- add / remove

    def add(self, arg: str | None) -> tuple[str, ...]:
        """Merge a package; returns the keys the removal phase dropped."""
        if not arg:
            raise TxError("add needs a package file or '-' for stdin")
        record = self.require_active(EXIT_NO_TX_ADD)
        state = self.load_state()
        with read_package(arg, self.staging_parent(record), self.limits) as package:
            check_revision(package.document, source=package.source)
            merged, dropped = apply_package(state, package.document)
            self._deliver_objects(record, package.objects)
            self.write_state(merged)
        return dropped

    def _deliver_objects(self, record: TxRecord, objects: Mapping[str, Path]) -> None:
        if not objects:
            return
        if not record.is_local:
            for sha, path in sorted(objects.items()):
                self.control.put_object(sha, path)
            return
        objdir = Path(record.objdir or "")
        if not record.objdir or not objdir.is_dir():
            raise TxError("the objects directory does not exist", source=record.objdir)
        install_objects(objects, objdir)

    def remove(self, part: str | None) -> tuple[str, ...]:
        """Remove a part; returns the removed keys (none is not an error)."""
        self.require_active(EXIT_NO_TX_REMOVE)
        if not part:
            raise TxError("remove needs a part", exit_code=EXIT_NO_PART)
        state = self.load_state()
        new_state, removed = remove_part(state, part)
        if removed:
            self.write_state(new_state)
        return removed

    # ---- commit (remote) / deploy (local)

    def commit(self, name: str | None = None) -> str:
        record = self.require_active(EXIT_NOT_ACTIVE)
        if record.is_local:
            raise TxError("this is a local transaction; use 'pvreal tx deploy DIR'",
                          exit_code=EXIT_WRONG_KIND)
        if name is not None and not name.startswith("locals/"):
            raise TxError(f"revision name {name!r} must start with 'locals/'")
        state = self.load_final_state()
        data = dump_state(state)
        revision = name or _local_revision_name(data)
        self.control.put_step(revision, data)
        self.write_record(TxRecord(TxStatus.COMMITED, False, record.objdir))
        return revision

    def deploy(self, target: str | None) -> list[str]:
        """Lay the revision out in `target`; returns warnings for the CLI to show."""
        if not target:
            raise TxError("deploy needs a target directory", exit_code=EXIT_NO_TX_ADD)
        record = self.require_active(EXIT_NOT_ACTIVE)
        if not record.is_local or not record.objdir:
            raise TxError("this is a remote transaction; use 'pvreal tx commit'")
        state = self.load_final_state()
        open_journal(self.path, Path(target))
        crash_point("journaled")
        try:
            warnings = deploy_revision(state, self.current_path.read_bytes(),
                                       Path(record.objdir), Path(target))
            self.write_record(TxRecord(TxStatus.DEPLOYED, True, record.objdir))
            crash_point("recorded")
        finally:
            close_journal(self.path)  # still alive: deploy_revision left the target whole
        return warnings

    # ---- queue (pvreal.tx.queue)

    def queue_new(self, queue: str | None, objdir: str | None) -> None:
        self.queue.new(queue, objdir)

    def queue_remove(self, part: str | None) -> Path:
        return self.queue.remove(part)

    def queue_unpack(self, arg: str | None) -> Path:
        return self.queue.unpack(arg)

    def queue_process(self, base: str | None = None, queue: str | None = None,
                      objdir: str | None = None) -> None:
        self.queue.process(base, queue, objdir)


def _local_revision_name(state: bytes) -> str:
    digest = hashlib.sha256(state).hexdigest()[:8]
    return f"locals/pvtx-{int(time.time())}-{digest}-{random.randrange(1000)}"
