"""pvtx's queue mode: record remove and add steps in a queue folder now (their objects go to the
objects directory at once), replay them onto a transaction later.

A step is an entry `NNN__<name>` of the queue folder: `NNN__<part, / as %2F>.remove` (an empty
file) or `NNN__<package>/json` (a folder). The queue and its step counter live in the record.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from pvreal.durable import fsync_dir
from pvreal.objectstore import sha256_file
from pvreal.tx.errors import EXIT_NO_TX_ADD, EXIT_NO_TX_REMOVE, EXIT_WRONG_KIND, TxError
from pvreal.tx.packages import STDIN_ARG, install_objects, read_package
from pvreal.tx.record import QueueRecord, TxRecord, TxStatus, absolute, write_durably
from shared.state import is_sha256
from shared.transaction import State, apply_package, check_revision, parse_document, remove_part

if TYPE_CHECKING:
    from pvreal.tx.folder import TxFolder

STDIN_PACKAGE_NAME = "package"  # queue entry name for a package read from stdin (as pvtx)
_QUEUE_ENTRY_RE = re.compile(r"([0-9]+)__(.*)\Z", re.DOTALL)
_REMOVE_SUFFIX = ".remove"


class TxQueue:
    """The queue commands of one transaction folder (`TxFolder.queue_*` call these)."""

    def __init__(self, folder: TxFolder):
        self.folder = folder

    def _queue_record(self) -> tuple[TxRecord, QueueRecord, Path]:
        record = self.folder.open_record()
        if record is None or record.queue is None:
            raise TxError("no queue; run 'queue new QUEUE OBJECTS' first",
                          exit_code=EXIT_NO_TX_ADD)
        queue_dir = Path(record.queue.dir)
        if not queue_dir.is_dir():
            raise TxError(f"queue {queue_dir} does not exist", exit_code=EXIT_NO_TX_ADD)
        return record, record.queue, queue_dir

    def _count_step(self, record: TxRecord, queue: QueueRecord) -> None:
        self.folder.write_record(replace(record, queue=replace(queue, count=queue.count + 1)))

    def new(self, queue: str | None, objdir: str | None) -> None:
        if not queue or not objdir:
            raise TxError("queue new needs QUEUE and OBJECTS", exit_code=EXIT_NO_TX_ADD)
        record = self.folder.open_record()
        if record is not None and record.active:
            raise TxError("a transaction is active; finish or abort it before starting a queue",
                          exit_code=EXIT_WRONG_KIND)
        self.folder.wipe()
        queue_dir = Path(absolute(queue) or queue)
        queue_dir.mkdir(parents=True, exist_ok=True, mode=0o775)
        self.folder.write_record(TxRecord(TxStatus.SET, True, absolute(objdir),
                                          QueueRecord(str(queue_dir))))

    def remove(self, part: str | None) -> Path:
        if not part:
            raise TxError("queue remove needs a part", exit_code=EXIT_NO_TX_ADD)
        record, queue, queue_dir = self._queue_record()
        entry = queue_dir / f"{queue.count:03d}__{part.replace('/', '%2F')}{_REMOVE_SUFFIX}"
        if entry.exists():
            raise TxError("queue entry already exists", source=str(entry))
        fd = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        fsync_dir(queue_dir)
        self._count_step(record, queue)
        return entry

    def unpack(self, arg: str | None) -> Path:
        if not arg:
            raise TxError("queue unpack needs a package file or '-'", exit_code=EXIT_NO_TX_ADD)
        record, queue, queue_dir = self._queue_record()
        name = STDIN_PACKAGE_NAME if arg == STDIN_ARG else os.path.basename(arg.rstrip("/"))
        entry = queue_dir / f"{queue.count:03d}__{name}"
        if entry.exists():
            raise TxError("queue entry already exists", source=str(entry))
        with read_package(arg, self.folder.staging_parent(record), self.folder.limits) as package:
            check_revision(package.document, source=package.source)
            objdir = Path(record.objdir or "")
            objdir.mkdir(parents=True, exist_ok=True, mode=0o775)  # as pvtx, once input is good
            install_objects(package.objects, objdir)
            temp = queue_dir / f".{entry.name}.tmp"
            shutil.rmtree(temp, ignore_errors=True)
            temp.mkdir()
            write_durably(temp / "json", package.raw)
            os.rename(temp, entry)
            fsync_dir(queue_dir)
        self._count_step(record, queue)
        return entry

    def process(self, base: str | None = None, queue: str | None = None,
                objdir: str | None = None) -> None:
        if queue and objdir:
            self.new(queue, objdir)
        record = self.folder.open_record()
        if record is None or record.queue is None:
            raise TxError("no queue; run 'queue new QUEUE OBJECTS' first")
        queue_dir = Path(record.queue.dir)
        if not queue_dir.is_dir():
            raise TxError(f"queue {queue_dir} does not exist")
        if base is not None:
            self.folder.begin(base)
        record = self.folder.require_active(EXIT_NO_TX_REMOVE)
        state = self.folder.load_state()
        pending: dict[str, Path] = {}
        for entry in _queue_entries(queue_dir):
            state = _apply_entry(state, entry, pending)
        if pending:
            objdir_path = Path(record.objdir or "")
            objdir_path.mkdir(parents=True, exist_ok=True, mode=0o775)
            install_objects(pending, objdir_path)
        self.folder.write_state(state)


def _apply_entry(state: State, entry: Path, pending: dict[str, Path]) -> State:
    match = _QUEUE_ENTRY_RE.match(entry.name)
    assert match is not None  # _queue_entries only yields matching names
    decoded = match.group(2).replace("%2F", "/").replace("%2f", "/")
    dot = decoded.rfind(".")
    # pvtx: a name whose last dot-suffix is a prefix of ".remove" is a remove step.
    if dot >= 0 and _REMOVE_SUFFIX.startswith(decoded[dot:]):
        return remove_part(state, decoded[:dot])[0]
    if not entry.is_dir():
        return state
    json_path = entry / "json"
    try:
        raw = json_path.read_bytes()
    except FileNotFoundError:
        raise TxError("queued package has no json", source=str(json_path)) from None
    package = parse_document(raw, source=str(json_path))
    check_revision(package, source=str(json_path))
    state = apply_package(state, package)[0]
    objects = entry / "objects"
    if objects.is_dir():
        for obj in sorted(objects.iterdir()):
            if not is_sha256(obj.name) or not obj.is_file() or obj.is_symlink():
                raise TxError("queued objects must be regular files named by their sha256",
                              source=str(obj))
            if sha256_file(obj) != obj.name:
                raise TxError("object content does not match its sha256 name", source=str(obj))
            pending[obj.name] = obj
    return state


def _queue_entries(queue_dir: Path) -> list[Path]:
    """Queue steps in order: by sequence number, then by name (byte order below 1000 steps, as
    pvtx's alphasort; pvtx misorders from 1000 on)."""
    found = []
    for child in queue_dir.iterdir():
        match = _QUEUE_ENTRY_RE.match(child.name)
        if match:
            found.append((int(match.group(1)), child.name.encode(), child))
    return [child for _, _, child in sorted(found)]
