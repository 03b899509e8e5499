"""pvtx-style transactions on disk: the transaction folder, the queue, deploy and commit.

The merge rules are pure (`shared.transaction`); this module owns the files:

* `PVTXDIR/current.json`: the state being built, always canonical JSON;
* `PVTXDIR/.status.json`: the transaction record (pvtx keeps a binary `.status`; ours is JSON,
  see docs/pvtx.md): `status` (pvtx's names: SET, ACTIVE, COMMITED, DEPLOYED), `is_local`,
  `objdir`, and for a queue `queue` = {dir, count, error}.

Every write is durable (temporary file, fsync, rename, fsync of the folder), every input is
checked before anything changes, and a failing command leaves the folder and the objects
directory as they were. Errors are `TxError`s carrying pvtx's exit status.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from pvreal import safetar
from pvreal.ctrl.client import UnixHTTPConnection
from pvreal.durable import atomic_write, fsync_dir
from pvreal.storage import sha256_file
from shared import canonical
from shared.errors import PvError
from shared.transaction import (
    State,
    apply_package,
    check_revision,
    dump_state,
    empty_state,
    entries,
    parse_document,
    remove_part,
)

STATUS_FILE = ".status.json"
CURRENT_FILE = "current.json"
STDIN_ARG = "-"
STDIN_PACKAGE_NAME = "package"  # queue entry name for a package read from stdin (as pvtx)
CONTROL_SOCKETS = ("/run/pantavisor/pv/pv-ctrl", "/pv/pv-ctrl", "/pantavisor/pv-ctrl")
SOCKET_ENV = "PVTX_SOCKET"
TXDIR_ENV = "PVTXDIR"
_SHA_RE = re.compile(r"[0-9a-f]{64}\Z")
_QUEUE_ENTRY_RE = re.compile(r"([0-9]+)__(.*)\Z", re.DOTALL)
_REMOVE_SUFFIX = ".remove"
# bsp/run.json keys (matched by prefix, in this order) -> boot asset links in `.pv/`.
_BOOT_LINKS = (
    ("fit", "pantavisor.fit"),
    ("pantavisor", "pv-initrd.img"),
    ("initrd", "pv-initrd.img"),
    ("kernel", "pv-kernel.img"),
    ("linux", "pv-kernel.img"),
    ("ftd", "pv-ftd.img"),
)

# pvtx's exit statuses (SEMANTICS §12).
EXIT_OK = 0
EXIT_NO_TX_ADD = 1  # also: missing arguments for deploy / queue verbs, no queue
EXIT_NO_TX_REMOVE = 3  # also: queue process without an active transaction
EXIT_NO_PART = 4
EXIT_NOT_ACTIVE = 11  # show, commit, deploy
EXIT_WRONG_KIND = 12  # commit on a local transaction; queue new while active
EXIT_FAILED = 255  # everything else (-1)


class TxError(PvError):
    """A transaction error with the exit status pvtx gives it."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILED,
                 source: str | None = None, key: str | None = None):
        super().__init__(message, source=source, key=key)
        self.exit_code = exit_code


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


# --------------------------------------------------------------------------------------------
# durable files


def write_durably(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new content."""
    atomic_write(path, data, mode=mode)


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


# --------------------------------------------------------------------------------------------
# the control socket (pv-ctrl: HTTP over a Unix socket)


class ControlClient:
    """The few pv-ctrl calls pvtx makes. `path=None` tries Pantavisor's usual socket paths."""

    def __init__(self, path: str | None = None, timeout: float = 30.0):
        self.candidates = (path,) if path else CONTROL_SOCKETS
        self.timeout = timeout

    def _connect(self, what: str) -> UnixHTTPConnection:
        errors = []
        for candidate in self.candidates:
            conn = UnixHTTPConnection(candidate, self.timeout)
            try:
                conn.connect()
                return conn
            except OSError as exc:
                errors.append(f"{candidate}: {exc.strerror or exc}")
        raise TxError(
            f"{what} needs a running device's control socket (pv-ctrl); pass --socket PATH or "
            f"set {SOCKET_ENV}. Tried: " + "; ".join(errors)
        )

    def request(self, method: str, path: str, body: bytes | BinaryIO | None = None, *,
                content_type: str | None = None, length: int | None = None,
                what: str) -> bytes:
        conn = self._connect(what)
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if body is not None:
            headers["Content-Length"] = str(len(body) if isinstance(body, bytes) else length)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise TxError(f"{what}: {method} {path} over {conn.unix_path} failed: {exc}") from None
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            detail = data.decode("utf-8", "replace").strip()[:200]
            # pvtx keeps -status as its error code; the exit status is that modulo 256.
            raise TxError(f"{what}: {method} {path} answered {response.status} {detail}".strip(),
                          exit_code=(-response.status) % 256)
        return data

    def current_state(self) -> bytes:
        return self.request("GET", "/steps/current", what="begin current")

    def put_object(self, sha: str, path: Path) -> None:
        with open(path, "rb") as handle:
            self.request("PUT", f"/objects/{sha}", handle, length=path.stat().st_size,
                         content_type="application/octet-stream", what="uploading an object")

    def put_step(self, revision: str, state: bytes) -> None:
        self.request("PUT", f"/steps/{revision}", state, content_type="application/json",
                     what="commit")


# --------------------------------------------------------------------------------------------
# inputs


@contextlib.contextmanager
def _open_input(arg: str) -> Iterator[tuple[BinaryIO, str]]:
    if arg == STDIN_ARG:
        yield sys.stdin.buffer, "<stdin>"
        return
    try:
        handle = open(arg, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise TxError(f"cannot open the package: {exc.strerror}", source=arg) from None
    with handle:
        yield handle, arg


@dataclass(frozen=True, slots=True)
class _LoadedPackage:
    source: str
    document: State
    raw: bytes
    objects: Mapping[str, Path]  # sha -> staged file


@contextlib.contextmanager
def read_package(arg: str, staging_parent: Path,
                 limits: safetar.Limits = safetar.DEFAULT_LIMITS) -> Iterator[_LoadedPackage]:
    """A JSON package or a tar/tar.gz package (`-` = stdin), checked; staged objects are removed
    when the block ends (install them inside it)."""
    with _open_input(arg) as (stream, source):
        kind, stream = safetar.sniff(stream)
        if kind == "json":
            raw = safetar.read_limited(stream, limits.json_bytes, source=source)
            yield _LoadedPackage(source, parse_document(raw, source=source), raw, {})
            return
        with safetar.unpack_package(stream, source=source, kind=kind,
                                    staging_parent=staging_parent, limits=limits) as package:
            label = f"{source} member {safetar.PACKAGE_MEMBER!r}"
            assert package.json is not None  # unpack_package insists on it
            document = parse_document(package.json, source=label)
            yield _LoadedPackage(label, document, package.json, package.objects)


# --------------------------------------------------------------------------------------------
# the transaction folder


class TxFolder:
    """One pvtx transaction folder. Methods mirror pvtx's commands and raise `TxError`."""

    def __init__(self, path: Path, *, control: ControlClient | None = None,
                 limits: safetar.Limits = safetar.DEFAULT_LIMITS):
        self.path = Path(path)
        self.control = control or ControlClient()
        self.limits = limits

    # ---- files

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

    def _write_record(self, record: TxRecord) -> None:
        write_durably(self.status_path, canonical.dump_bytes(record.to_json()))

    def _write_state(self, state: State) -> None:
        write_durably(self.current_path, dump_state(state))

    def _load_state(self) -> State:
        source = str(self.current_path)
        try:
            text = self.current_path.read_bytes()
        except FileNotFoundError:
            raise TxError("the transaction has no current.json; abort and begin again",
                          source=source) from None
        return parse_document(text, source=source)

    def _load_final_state(self) -> State:
        """The state about to leave the transaction must be a revision Pantavisor accepts."""
        state = self._load_state()
        check_revision(state, source=str(self.current_path))
        return state

    def _require_active(self, exit_code: int) -> TxRecord:
        record = self.record()
        if record is None or not record.active:
            raise TxError("no active transaction; run 'begin' first", exit_code=exit_code)
        return record

    def _wipe(self) -> None:
        """Start over: pvtx empties the whole folder; only our own files are removed here."""
        self.path.mkdir(parents=True, exist_ok=True)
        for child in self.path.iterdir():
            if child.name in (STATUS_FILE, CURRENT_FILE) or child.name.endswith(".tmp"):
                child.unlink(missing_ok=True)
            elif child.name.startswith(".pvtx-unpack-") and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
        fsync_dir(self.path)

    def _staging_parent(self, record: TxRecord) -> Path:
        # Stage on the objects directory's file system so installing is a rename.
        if record.is_local and record.objdir and Path(record.objdir).is_dir():
            return Path(record.objdir)
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

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
        record = self.record()
        if record is not None and record.active:
            raise TxError("a transaction is already in progress; commit, deploy or abort it")
        state = self.resolve_base(base)  # checked before anything is wiped
        if record is not None and record.status is TxStatus.SET and record.queue is not None:
            # A queue is waiting: keep it; its objects directory wins over the argument.
            record = replace(record, status=TxStatus.ACTIVE, is_local=True)
        else:
            self._wipe()
            record = TxRecord(TxStatus.ACTIVE, is_local=objdir is not None,
                              objdir=_absolute(objdir))
        self._write_state(state)
        self._write_record(record)

    def abort(self) -> None:
        record = self.record()
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
        self._require_active(EXIT_NOT_ACTIVE)
        try:
            return self.current_path.read_bytes()
        except FileNotFoundError:
            raise TxError("the transaction has no current.json",
                          source=str(self.current_path)) from None

    def state(self) -> State:
        self._require_active(EXIT_NOT_ACTIVE)
        return self._load_state()

    # ---- add / remove

    def add(self, arg: str | None) -> tuple[str, ...]:
        """Merge a package; returns the keys the removal phase dropped."""
        if not arg:
            raise TxError("add needs a package file or '-' for stdin")
        record = self._require_active(EXIT_NO_TX_ADD)
        state = self._load_state()
        with read_package(arg, self._staging_parent(record), self.limits) as package:
            check_revision(package.document, source=package.source)
            merged, dropped = apply_package(state, package.document)
            self._deliver_objects(record, package.objects)
            self._write_state(merged)
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
        for sha, path in sorted(objects.items()):
            safetar.install_object(path, objdir, sha)
        fsync_dir(objdir)

    def remove(self, part: str | None) -> tuple[str, ...]:
        """Remove a part; returns the removed keys (none is not an error)."""
        self._require_active(EXIT_NO_TX_REMOVE)
        if not part:
            raise TxError("remove needs a part", exit_code=EXIT_NO_PART)
        state = self._load_state()
        new_state, removed = remove_part(state, part)
        if removed:
            self._write_state(new_state)
        return removed

    # ---- commit (remote) / deploy (local)

    def commit(self, name: str | None = None) -> str:
        record = self._require_active(EXIT_NOT_ACTIVE)
        if record.is_local:
            raise TxError("this is a local transaction; use 'pvreal tx deploy DIR'",
                          exit_code=EXIT_WRONG_KIND)
        if name is not None and not name.startswith("locals/"):
            raise TxError(f"revision name {name!r} must start with 'locals/'")
        state = self._load_final_state()
        data = dump_state(state)
        revision = name or _local_revision_name(data)
        self.control.put_step(revision, data)
        self._write_record(TxRecord(TxStatus.COMMITED, False, record.objdir))
        return revision

    def deploy(self, target: str | None) -> None:
        if not target:
            raise TxError("deploy needs a target directory", exit_code=EXIT_NO_TX_ADD)
        record = self._require_active(EXIT_NOT_ACTIVE)
        if not record.is_local or not record.objdir:
            raise TxError("this is a remote transaction; use 'pvreal tx commit'")
        state = self._load_final_state()
        deploy_revision(state, self.current_path.read_bytes(), Path(record.objdir), Path(target))
        self._write_record(TxRecord(TxStatus.DEPLOYED, True, record.objdir))

    # ---- queue

    def _queue_record(self) -> tuple[TxRecord, QueueRecord, Path]:
        record = self.record()
        if record is None or record.queue is None:
            raise TxError("no queue; run 'queue new QUEUE OBJECTS' first",
                          exit_code=EXIT_NO_TX_ADD)
        queue_dir = Path(record.queue.dir)
        if not queue_dir.is_dir():
            raise TxError(f"queue {queue_dir} does not exist", exit_code=EXIT_NO_TX_ADD)
        return record, record.queue, queue_dir

    def queue_new(self, queue: str | None, objdir: str | None) -> None:
        if not queue or not objdir:
            raise TxError("queue new needs QUEUE and OBJECTS", exit_code=EXIT_NO_TX_ADD)
        record = self.record()
        if record is not None and record.active:
            raise TxError("a transaction is active; finish or abort it before starting a queue",
                          exit_code=EXIT_WRONG_KIND)
        self._wipe()
        queue_dir = Path(_absolute(queue) or queue)
        queue_dir.mkdir(parents=True, exist_ok=True, mode=0o775)
        self._write_record(TxRecord(TxStatus.SET, True, _absolute(objdir),
                                    QueueRecord(str(queue_dir))))

    def queue_remove(self, part: str | None) -> Path:
        if not part:
            raise TxError("queue remove needs a part", exit_code=EXIT_NO_TX_ADD)
        record, queue, queue_dir = self._queue_record()
        entry = queue_dir / f"{queue.count:03d}__{part.replace('/', '%2F')}{_REMOVE_SUFFIX}"
        if entry.exists():
            raise TxError("queue entry already exists", source=str(entry))
        fd = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        fsync_dir(queue_dir)
        self._write_record(replace(record, queue=replace(queue, count=queue.count + 1)))
        return entry

    def queue_unpack(self, arg: str | None) -> Path:
        if not arg:
            raise TxError("queue unpack needs a package file or '-'", exit_code=EXIT_NO_TX_ADD)
        record, queue, queue_dir = self._queue_record()
        name = STDIN_PACKAGE_NAME if arg == STDIN_ARG else os.path.basename(arg.rstrip("/"))
        entry = queue_dir / f"{queue.count:03d}__{name}"
        if entry.exists():
            raise TxError("queue entry already exists", source=str(entry))
        with read_package(arg, self._staging_parent(record), self.limits) as package:
            check_revision(package.document, source=package.source)
            objdir = Path(record.objdir or "")
            objdir.mkdir(parents=True, exist_ok=True, mode=0o775)  # as pvtx, once input is good
            if package.objects:
                for sha, path in sorted(package.objects.items()):
                    safetar.install_object(path, objdir, sha)
                fsync_dir(objdir)
            temp = queue_dir / f".{entry.name}.tmp"
            shutil.rmtree(temp, ignore_errors=True)
            temp.mkdir()
            write_durably(temp / "json", package.raw)
            os.rename(temp, entry)
            fsync_dir(queue_dir)
        self._write_record(replace(record, queue=replace(queue, count=queue.count + 1)))
        return entry

    def queue_process(self, base: str | None = None, queue: str | None = None,
                      objdir: str | None = None) -> None:
        if queue and objdir:
            self.queue_new(queue, objdir)
        record = self.record()
        if record is None or record.queue is None:
            raise TxError("no queue; run 'queue new QUEUE OBJECTS' first")
        queue_dir = Path(record.queue.dir)
        if not queue_dir.is_dir():
            raise TxError(f"queue {queue_dir} does not exist")
        if base is not None:
            self.begin(base)
        record = self._require_active(EXIT_NO_TX_REMOVE)
        state = self._load_state()
        pending: dict[str, Path] = {}
        for entry in _queue_entries(queue_dir):
            state = self._apply_queue_entry(state, entry, pending)
        if pending:
            objdir_path = Path(record.objdir or "")
            objdir_path.mkdir(parents=True, exist_ok=True, mode=0o775)
            for sha, path in sorted(pending.items()):
                safetar.install_object(path, objdir_path, sha)
            fsync_dir(objdir_path)
        self._write_state(state)

    def _apply_queue_entry(self, state: State, entry: Path, pending: dict[str, Path]) -> State:
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
                if not _SHA_RE.match(obj.name) or not obj.is_file() or obj.is_symlink():
                    raise TxError("queued objects must be regular files named by their sha256",
                                  source=str(obj))
                if sha256_file(obj) != obj.name:
                    raise TxError("object content does not match its sha256 name",
                                  source=str(obj))
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


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(path)


def _local_revision_name(state: bytes) -> str:
    digest = hashlib.sha256(state).hexdigest()[:8]
    return f"locals/pvtx-{int(time.time())}-{digest}-{random.randrange(1000)}"


# --------------------------------------------------------------------------------------------
# deploy


def deploy_revision(state: State, state_bytes: bytes, objdir: Path, target: Path) -> None:
    """Lay the revision out in `target` like pvr checkout / Pantavisor's trail: `.pvr/json`,
    `.pvr/config`, one file per entry (objects hard-linked from `objdir`, inline JSON written out)
    and `.pv/` boot links from `bsp/run.json`. Built in `<target>.tmp`, then swapped in."""
    temp = target.with_name(target.name + ".tmp")
    backup = target.with_name(target.name + ".bak")
    shutil.rmtree(temp, ignore_errors=True)
    try:
        _build_revision(state, state_bytes, objdir, target, temp)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise TxError(f"deploy failed: {exc}", source=str(target)) from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    try:
        _swap_in(temp, target, backup)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise TxError(f"couldn't swap the new revision in: {exc}", source=str(target)) from None


def _build_revision(state: State, state_bytes: bytes, objdir: Path, target: Path,
                    temp: Path) -> None:
    (temp / ".pvr").mkdir(parents=True)
    config = target / ".pvr" / "config"
    config_text = (config.read_bytes() if config.is_file()
                   else f'{{"ObjectsDir": {canonical.dumps(str(objdir))}}}'.encode())
    _write_file(temp / ".pvr" / "config", config_text)
    _write_file(temp / ".pvr" / "json", state_bytes, mode=0o600)
    for key in entries(state):
        if key.startswith("#spec"):
            continue
        _deploy_entry(temp, key, state[key], objdir)
    (temp / ".pv").mkdir()
    _link_boot_assets(temp)
    _fsync_tree(temp)


def _write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _deploy_entry(root: Path, key: str, value: Any, objdir: Path) -> None:
    if isinstance(value, str) and value.startswith("#spec"):
        return  # pvtx skips values that start with "#spec"
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if path.is_dir():
        raise TxError("a state key is both a file and a folder", key=key)
    path.unlink(missing_ok=True)
    if isinstance(value, str) and _SHA_RE.match(value):
        try:
            os.link(objdir / value, path)
        except OSError as exc:
            raise TxError(f"couldn't hard-link object {value} from {objdir}: {exc.strerror}",
                          key=key) from None
    elif isinstance(value, str):
        _write_file(path, value.encode())
    else:
        _write_file(path, canonical.dump_bytes(value))


def _link_boot_assets(root: Path) -> None:
    run_json = root / "bsp" / "run.json"
    if not run_json.is_file():
        return
    try:
        run = canonical.loads(run_json.read_bytes(), source="bsp/run.json", allow_duplicates=True)
    except PvError:
        return
    if not isinstance(run, dict):
        return
    for key, value in run.items():
        # pvtx: the run.json key only has to be a prefix of a known name ("f" counts as "fit").
        link = next((link for known, link in _BOOT_LINKS if known.startswith(key)), None)
        if link is None or not isinstance(value, str):
            continue
        source = root / "bsp" / value
        if value.startswith("/") or ".." in value.split("/") or not source.is_file():
            print(f"WARN: boot asset bsp/{value} does not exist; continuing without .pv/{link}")
            continue
        (root / ".pv" / link).unlink(missing_ok=True)
        os.link(source, root / ".pv" / link)


def _fsync_tree(root: Path) -> None:
    for folder, _, _ in os.walk(root):
        fsync_dir(Path(folder))


def _swap_in(temp: Path, target: Path, backup: Path) -> None:
    shutil.rmtree(backup, ignore_errors=True)
    had_target = target.exists()
    if had_target:
        os.rename(target, backup)
    try:
        os.rename(temp, target)
    except OSError:
        if had_target:
            os.rename(backup, target)
        raise
    fsync_dir(target.parent)
    if had_target:
        shutil.rmtree(backup, ignore_errors=True)
