"""The transaction folder on disk (PVTXDIR): the record `.status.json` and the state
`current.json`.

The record keeps pvtx's fields as canonical JSON (pvtx keeps a binary `.status`, see
docs/pvtx.md): `status` (pvtx's names: SET, ACTIVE, COMMITED, DEPLOYED), `is_local`, `objdir`,
and for a queue `queue` = {dir, count, error}. Every write is durable (`pvreal.durable`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pvreal.durable import atomic_write, fsync_dir
from pvreal.tx.errors import TxError
from shared import canonical
from shared.errors import PvError
from shared.transaction import State, check_revision, dump_state, parse_document

STATUS_FILE = ".status.json"
CURRENT_FILE = "current.json"
TXDIR_ENV = "PVTXDIR"
STAGING_PREFIX = ".pvtx-unpack-"  # safetar's staging folders, when staged in the folder itself


class TxStatus(StrEnum):
    """pvtx's status names, its spelling of COMMITED included."""

    SET = "SET"  # a queue exists, no transaction yet
    ACTIVE = "ACTIVE"
    COMMITED = "COMMITED"
    DEPLOYED = "DEPLOYED"


@dataclass(frozen=True, slots=True)
class QueueRecord:
    dir: str
    count: int = 0
    error: int = 0


@dataclass(frozen=True, slots=True)
class TxRecord:
    status: TxStatus
    is_local: bool
    objdir: str | None
    queue: QueueRecord | None = None

    @property
    def active(self) -> bool:
        return self.status is TxStatus.ACTIVE

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        if self.queue is None:
            del data["queue"]
        return data

    @classmethod
    def from_json(cls, data: Any, *, source: str) -> TxRecord:
        try:
            queue = data.get("queue")
            return cls(
                status=TxStatus(data["status"]),
                is_local=bool(data["is_local"]),
                objdir=data["objdir"],
                queue=None if queue is None else QueueRecord(
                    dir=str(queue["dir"]), count=int(queue["count"]), error=int(queue["error"])
                ),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise TxError(f"not a transaction record ({exc!r})", source=source) from None


def write_durably(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new content."""
    atomic_write(path, data, mode=mode)


def absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(path)


def resolve_txdir(explicit: str | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    """`--txdir`, else `$PVTXDIR`, else pvtx's defaults (root: $PREFIX/var/cache/pvtx,
    others: ~/.local/share/pvtx); the defaults are created when resolved."""
    if explicit:
        return Path(explicit)
    if environ.get(TXDIR_ENV):
        return Path(environ[TXDIR_ENV])
    if os.geteuid() == 0:
        path = Path(environ.get("PREFIX", "/")) / "var/cache/pvtx"
    else:
        home = environ.get("HOME") or os.path.expanduser("~")
        path = Path(home) / ".local/share/pvtx" if home else Path("/var/cache/pvtx")
    path.mkdir(parents=True, exist_ok=True, mode=0o755)
    return path


class TxFiles:
    """The record and the state file of one transaction folder; the commands build on this."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def status_path(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def current_path(self) -> Path:
        return self.path / CURRENT_FILE

    def record(self) -> TxRecord | None:
        try:
            text = self.status_path.read_bytes()
        except FileNotFoundError:
            return None
        source = str(self.status_path)
        try:
            return TxRecord.from_json(canonical.loads(text, source=source), source=source)
        except PvError as exc:
            raise TxError(exc.message, source=source) from None

    def write_record(self, record: TxRecord) -> None:
        write_durably(self.status_path, canonical.dump_bytes(record.to_json()))

    def write_state(self, state: State) -> None:
        write_durably(self.current_path, dump_state(state))

    def load_state(self) -> State:
        source = str(self.current_path)
        try:
            text = self.current_path.read_bytes()
        except FileNotFoundError:
            raise TxError("the transaction has no current.json; abort and begin again",
                          source=source) from None
        return parse_document(text, source=source)

    def load_final_state(self) -> State:
        """The state about to leave the transaction must be a revision Pantavisor accepts."""
        state = self.load_state()
        check_revision(state, source=str(self.current_path))
        return state

    def wipe(self) -> None:
        """Start over: pvtx empties the whole folder; only our own files are removed here."""
        self.path.mkdir(parents=True, exist_ok=True)
        for child in self.path.iterdir():
            if child.name in (STATUS_FILE, CURRENT_FILE) or child.name.endswith(".tmp"):
                child.unlink(missing_ok=True)
            elif child.name.startswith(STAGING_PREFIX) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
        fsync_dir(self.path)

    def staging_parent(self, record: TxRecord) -> Path:
        # Stage on the objects directory's file system so installing is a rename.
        if record.is_local and record.objdir and Path(record.objdir).is_dir():
            return Path(record.objdir)
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path
