"""What each pv-ctrl endpoint does (pantavisor.md §3.4, §5.1), independent of HTTP.

The HTTP layer (`server.py`) routes a request here with its body as a stream; each method returns
a `Response`. Object uploads never involve the engine (they only add verified files to the
pool); step uploads, commands and the ready signal become engine events and the answer is the
engine's `CtrlReply`. Bad input is refused before anything is written, or (a state that does not
parse or verify) through the engine, which deletes the step (§3.4 step 2).

No input may stop the device (docs/device.md, "Hostile input"): names are checked with the rule the engine
uses (`shared.engine.ctrl.revision_decision`), bodies have size limits, and a state body is
decoded on one worker thread, at most two held at once, so that a large or deeply nested state
neither exhausts memory nor holds up `GET /status`.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from pvreal.device.secureboot import signature_problem
from pvreal.objectstore import ObjectHashMismatch, is_sha
from pvreal.storage import LOCAL_PREFIX
from shared import canonical
from shared.engine.commands import CtrlReply
from shared.engine.ctrl import (
    MAX_STATE_BYTES,
    OPS_WITH_REVISION,
    CtrlDecision,
    Op,
    body_size_decision,
    missing_objects_decision,
    object_put_decision,
    revision_decision,
    state_depth_decision,
)
from shared.engine.events import (
    ContainerReady,
    CtrlCommand,
    LocalStepStarted,
    LocalStepUploaded,
    ObjectPut,
    StorageStats,
)
from shared.engine.progress import Msg
from shared.errors import PvError
from shared.state import State, parse_state

if TYPE_CHECKING:
    from pvreal.device.daemon import Device

_CHUNK = 1 << 20
STATE_SLOTS = 2  # state bodies held in memory at once (one decoding, one waiting)
SLOT_WAIT_S = 10.0  # how long an upload waits for a slot before 503


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-able, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def error(cls, status: int, message: str, **headers: str) -> Response:
        return cls(status, {"Error": message}, dict(headers))

    @classmethod
    def decision(cls, answer: CtrlDecision | CtrlReply, default: str = "refused") -> Response:
        """A refusal decided in shared.engine.ctrl (directly or as the engine's CtrlReply)."""
        headers = {"Retry-After": str(answer.retry_after)} if answer.retry_after else {}
        if answer.status == 204:  # nothing to do (e.g. GO_REMOTE when remote): no body at all
            return cls(204, None, headers)
        reason = answer.reason if isinstance(answer, CtrlDecision) else answer.body
        return cls(answer.status, {"Error": reason or default}, headers)


class Truncated(Exception):
    """The client sent fewer bytes than its Content-Length."""


def read_exactly(stream: BinaryIO, length: int) -> bytes:
    data = stream.read(length)
    if len(data) != length:
        raise Truncated(f"body truncated: got {len(data)} of {length} bytes")
    return data


class CtrlApi:
    """The endpoints of one device."""

    def __init__(self, device: Device):
        self.device = device
        self.storage = device.storage
        self._state_slots = threading.BoundedSemaphore(STATE_SLOTS)
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pv-ctrl-state")

    # ------------------------------------------------------------------ objects

    def list_objects(self) -> Response:
        objs = self.storage.objects
        return Response(200, [{"sha256": s, "size": objs.size(s)} for s in objs.names()])

    def put_object(self, sha: str, stream: BinaryIO, length: int) -> Response:
        """422 when the bytes do not hash to `sha`, 507 when they cannot fit, no-op if present."""
        if not is_sha(sha):
            return Response.error(422, f"object name {sha!r} is not a lowercase sha256")
        objects = self.storage.objects
        if objects.has(sha) and objects.is_valid(sha):
            _drain(stream, length)
            self.device.post(ObjectPut(sha))
            return Response(200, {"sha256": sha, "stored": False})
        space = self.storage.space()
        fits = object_put_decision(
            length, StorageStats(space.total, space.free), self.device.config.gc_reserved
        )
        if not fits.accepted:
            return Response.decision(fits)
        tmp = objects.tmp_path(sha)
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as out:
                left = length
                while left:
                    chunk = stream.read(min(_CHUNK, left))
                    if not chunk:
                        raise Truncated(f"body truncated: got {length - left} of {length} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                    left -= len(chunk)
            if digest.hexdigest() != sha:
                raise ObjectHashMismatch(f"content hashes to {digest.hexdigest()}", key=sha)
            objects.commit_tmp(sha)
        except Truncated as exc:
            tmp.unlink(missing_ok=True)
            return Response.error(400, str(exc))
        except ObjectHashMismatch as exc:
            tmp.unlink(missing_ok=True)
            return Response.error(422, f"object {sha}: {exc.message}")
        except FileNotFoundError:
            # the device removed the partial file under us: a boot discards partial uploads, and
            # a GC may run; nothing is wrong with the request, so it can simply be sent again
            return Response.error(
                503, f"object {sha}: the upload was interrupted by the device; send it again",
                **{"Retry-After": "1"},
            )
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            return Response.error(507 if exc.errno == 28 else 500, f"object {sha}: {exc}")
        self.device.post(ObjectPut(sha))  # the engine's view of the pool (no link check later)
        return Response(200, {"sha256": sha, "stored": True})

    # ------------------------------------------------------------------ steps

    def list_steps(self) -> Response:
        out = []
        for rev in self.storage.revisions():
            try:
                progress = self.storage.read_progress(rev)
            except PvError:
                progress = None
            out.append({"name": rev, "progress": progress, "done": self.storage.is_done(rev)})
        return Response(200, out)

    def get_step(self, rev: str) -> Response:
        if rev == "current":
            rev = self.device.status().get("running") or self.device.booted_rev
        named = revision_decision(rev)
        if not named.accepted:
            return Response.decision(named)
        try:
            return Response(200, self.storage.state_path(rev).read_bytes())
        except OSError:
            return Response.error(404, f"no revision {rev}")

    def get_progress(self, rev: str) -> Response:
        named = revision_decision(rev)
        if not named.accepted:
            return Response.decision(named)
        try:
            record = self.storage.read_progress(rev)
        except PvError as exc:
            return Response.error(500, str(exc))
        if record is None:
            return Response.error(404, f"no progress for revision {rev}")
        return Response(200, record)

    def put_step(self, name: str, stream: BinaryIO, length: int, content_type: str) -> Response:
        """`PUT /steps/locals/<name>`: a state JSON, or a pvtx package tarball (json + objects).
        The unread rest of a refused body is drained by the HTTP layer."""
        rev = LOCAL_PREFIX + name
        named = revision_decision(rev)
        if not named.accepted:
            return Response.decision(named)
        if not self._state_slots.acquire(timeout=SLOT_WAIT_S):
            busy = {"Retry-After": "5"}
            return Response.error(503, "other state uploads are being checked", **busy)
        try:
            try:
                body, refused = self._read_step_body(stream, length, content_type)
            except Truncated as exc:
                return Response.error(400, str(exc))
            if refused is not None:
                return refused
            # Decoded on the worker thread: one at a time, whatever the number of uploads.
            state, error = self._decoder.submit(self._check_state, body, rev).result()
            del body
        finally:
            self._state_slots.release()
        self.device.executor.forget_state(rev)
        started = self.device.submit(LocalStepStarted(rev))
        if started.status != 200:  # nothing written: e.g. the revision is running
            return Response.error(started.status, started.body or "step refused")
        if state is not None:
            try:
                self.storage.write_state(rev, state.entries)
            except (PvError, OSError) as exc:
                state, error = None, f"{Msg.BAD_FORMAT}: {exc}"
        reply = self.device.submit(LocalStepUploaded(rev, state, error))
        if reply.status != 200:
            return Response.error(reply.status, reply.body or "state refused")
        return Response(200, {"revision": rev})

    def _read_step_body(
        self, stream: BinaryIO, length: int, content_type: str
    ) -> tuple[bytes, Response | None]:
        """The state bytes, or the refusal; a tarball's objects are verified while staged,
        installed only when the whole archive is good."""
        from pvreal import safetar  # here, not at boot: with tarfile, 35 ms of a QEMU boot (TCG)

        kind, sniffed = safetar.sniff(_Limited(stream, length))
        if kind == "json":
            fits = body_size_decision(length, MAX_STATE_BYTES, "state")
            if not fits.accepted:
                return b"", Response.decision(fits)
            return read_exactly(sniffed, length), None
        objdir = self.storage.objects.dir
        space = self.storage.space()
        limits = safetar.Limits(
            json_bytes=MAX_STATE_BYTES,
            total_bytes=min(safetar.DEFAULT_LIMITS.total_bytes, space.real_free),
        )
        try:
            with safetar.unpack_package(
                sniffed, source="PUT body", kind=kind, staging_parent=objdir, limits=limits
            ) as package:
                if package.json is None:
                    return b"", Response.error(422, "package has no json member")
                for sha, staged in package.objects.items():
                    safetar.install_object(staged, objdir, sha)
                    self.device.post(ObjectPut(sha))
                if package.objects:
                    safetar.fsync_dir(objdir)
                return package.json, None
        except safetar.BadPackage as exc:
            return b"", Response.error(422, str(exc))

    def _check_state(self, body: bytes, rev: str) -> tuple[State | None, str | None]:
        """(state, None) or (None, why it is refused): JSON, nesting, the state rules, the
        signature, and every object present on the device."""
        source = f"trails/{rev}/.pvr/json"
        try:
            doc = canonical.loads(body, source=source)
        except PvError as exc:
            return None, f"{Msg.BAD_FORMAT}: {exc}"
        shallow = state_depth_decision(doc)
        if not shallow.accepted:
            return None, f"{Msg.BAD_FORMAT}: {shallow.reason}"
        try:
            state = parse_state(doc, source=source)
        except PvError as exc:
            return None, f"{Msg.BAD_FORMAT}: {exc}"
        problem = signature_problem(state, self.device.config)
        if problem:
            return None, problem
        present = missing_objects_decision(state, self.storage.objects.has)
        if not present.accepted:
            return None, present.reason
        return state, None

    # ------------------------------------------------------------------ commands and signals

    def post_command(self, body: bytes) -> Response:
        try:
            doc = canonical.loads_object(body, source="POST /commands")
        except PvError as exc:
            return Response.error(400, str(exc))
        op, payload = doc.get("op"), doc.get("payload", "")
        if not isinstance(op, str) or not isinstance(payload, str):
            return Response.error(400, 'expected {"op": "<COMMAND>", "payload": "<string>"}')
        state = error = None
        known = Op.parse(op)
        if known in OPS_WITH_REVISION:
            named = revision_decision(payload)  # the engine's own rule, asked before the disk
            if not named.accepted:
                return Response.decision(named)
            state, error = self._load_revision(payload)
        # An unknown op still goes to the engine: its refusal (400) is decided in shared/ too.
        reply = self.device.submit(CtrlCommand(known or op, payload, state, error))
        if reply.status != 200:
            return Response.decision(reply)
        return Response(200, {"op": op, "payload": payload})

    def _load_revision(self, rev: str) -> tuple[State | None, str | None]:
        path = self.storage.state_path(rev)
        try:
            data = path.read_bytes()
        except OSError:
            return None, Msg.NOT_FOUND
        try:
            state = parse_state(data, source=str(path))
        except PvError:
            return None, Msg.BAD_FORMAT
        return state, signature_problem(state, self.device.config)

    def signal(self, container: str | None, body: bytes) -> Response:
        try:
            doc = canonical.loads(body or b"{}", source="POST /signal", allow_duplicates=True)
        except PvError:
            return Response.error(400, "signal body is not JSON")
        if not isinstance(doc, dict) or doc.get("type") != "ready":
            return Response.error(400, 'expected {"type": "ready", "payload": ""}')
        if container is None:
            return Response.error(400, "the ready signal comes from a container's own socket")
        # 404 / 403 are the engine's answer (shared.engine.ctrl.signal_decision).
        reply = self.device.submit(ContainerReady(container))
        if reply.status != 200:
            return Response.decision(reply)
        return Response(200, {"container": container, "signal": "ready"})

    # ------------------------------------------------------------------ reading

    def containers(self) -> Response:
        return Response(200, list(self.device.status().get("containers", {}).values()))

    def status(self) -> Response:
        return Response(200, self.device.status())

    def buildinfo(self) -> Response:
        from importlib import metadata

        try:
            version = metadata.version("pvtwin")
        except metadata.PackageNotFoundError:
            version = "unknown"
        opts = self.device.options
        return Response(
            200,
            {
                "project": "pvtwin",
                "backend": "pvreal",
                "version": version,
                "bootloader": opts.bootloader,
                "ordering": opts.ordering,
                "pid": os.getpid(),
            },
        )


def _drain(stream: BinaryIO, length: int) -> None:
    while length > 0:
        chunk = stream.read(min(_CHUNK, length))
        if not chunk:
            return
        length -= len(chunk)


class _Limited(io.RawIOBase):
    """At most `length` bytes of a socket stream (so a reader never waits for more)."""

    def __init__(self, raw: BinaryIO, length: int):
        self.raw, self.left = raw, length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            return 0
        data = self.raw.read(min(len(buffer), self.left))
        self.left -= len(data)
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.left
        data = self.raw.read(min(size, self.left)) if self.left > 0 else b""
        self.left -= len(data)
        return data
