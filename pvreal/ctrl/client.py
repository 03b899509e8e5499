"""A pv-ctrl client: http.client over an AF_UNIX socket (used by `pvreal ctl` and the tests)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from shared.engine.progress import FAILED_STATUSES, FINAL_STATUSES, Status
from shared.errors import PvError

# shared.engine.progress's sets as plain strings in Status's order: they meet JSON values and
# appear in messages
FINAL: tuple[str, ...] = tuple(s.value for s in Status if s in FINAL_STATUSES)
FAILED: tuple[str, ...] = tuple(s.value for s in Status if s in FAILED_STATUSES)


class CtrlError(PvError):
    """The device refused a request or could not be reached."""


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str | Path, timeout: float = 60.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> str:
        try:
            doc = self.json()
        except ValueError:
            return self.body.decode(errors="replace")
        return doc.get("Error", "") if isinstance(doc, dict) else str(doc)


class CtrlClient:
    def __init__(self, path: str | Path, timeout: float = 60.0):
        self.path = Path(path)
        self.timeout = timeout

    def request(
        self,
        method: str,
        url: str,
        body: bytes | BinaryIO | None = None,
        *,
        length: int | None = None,
        content_type: str = "application/json",
    ) -> Answer:
        conn = self._connection()
        headers = {}
        if body is not None:
            headers["Content-Type"] = content_type
            headers["Content-Length"] = str(len(body) if isinstance(body, bytes) else length)
        try:
            conn.request(method, url, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return Answer(response.status, data, {k: v for k, v in response.getheaders()})
        except (OSError, http.client.HTTPException) as exc:
            raise CtrlError(f"{method} {url}: {exc}", source=str(self.path)) from None
        finally:
            conn.close()

    def _connection(self) -> http.client.HTTPConnection:
        """A fresh connection per request, as pv-ctrl serves one request per connection."""
        return UnixHTTPConnection(self.path, self.timeout)

    def checked(self, method: str, url: str, body: bytes | None = None, **kw: Any) -> Answer:
        answer = self.request(method, url, body, **kw)
        if not answer.ok:
            raise CtrlError(f"{method} {url}: {answer.status} {answer.error}", source=str(self.path))
        return answer

    # ------------------------------------------------------------------ endpoints

    def put_object(self, sha: str, path: Path) -> Answer:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below; the open alone may fail
        except OSError as exc:
            raise CtrlError(f"object {sha}: cannot read {path}: {exc.strerror}") from None
        with f:
            return self.request(
                "PUT", f"/objects/{sha}", f, length=os.fstat(f.fileno()).st_size,
                content_type="application/octet-stream",
            )

    def put_step(self, rev: str, state: bytes, content_type: str = "application/json") -> Answer:
        return self.request("PUT", f"/steps/{quote(rev)}", state, content_type=content_type)

    def command(self, op: str, payload: str = "") -> Answer:
        return self.request("POST", "/commands", json.dumps({"op": op, "payload": payload}).encode())

    def progress(self, rev: str) -> dict[str, Any] | None:
        answer = self.request("GET", f"/steps/{quote(rev)}/progress")
        return answer.json() if answer.ok else None

    def status(self) -> dict[str, Any]:
        return self.checked("GET", "/status").json()

    def containers(self) -> list[dict[str, Any]]:
        return self.checked("GET", "/containers").json()

    def wait(
        self, rev: str, until: tuple[str, ...] = FINAL, timeout: float = 60.0, poll: float = 0.05
    ) -> dict[str, Any] | None:
        """Poll the progress of `rev` until its status is one of `until` or a failure;
        returns the last record seen (None if there never was one). The daemon may be rebooting
        or restarting meanwhile: a refused connection is retried."""
        deadline = time.monotonic() + timeout
        record = None
        while time.monotonic() < deadline:
            with contextlib.suppress(CtrlError):
                record = self.progress(rev) or record
            if record and record.get("status") in (*until, *FAILED):
                return record
            time.sleep(poll)
        return record


def first_listening(paths: tuple[str | Path, ...], timeout: float = 60.0) -> CtrlClient:
    """A client for the first of `paths` where something accepts a connection (Pantavisor's
    socket has lived at several paths). The probe connection is closed unused."""
    tried = []
    for path in paths:
        probe = UnixHTTPConnection(path, timeout)
        try:
            probe.connect()
        except OSError as exc:
            tried.append(f"{path}: {exc.strerror or exc}")
            continue
        finally:
            probe.close()
        return CtrlClient(path, timeout)
    raise CtrlError("nothing accepts connections; tried " + "; ".join(tried))
