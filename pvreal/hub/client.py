"""Clients of the Hub over plain HTTP (http.client, one request at a time, no event loop).

`DeviceClient` is what a device does: register with the fleet's token, log in with its own
secret, list its pending steps, fetch objects (resuming a cut download from its `.tmp` with a
Range request, checking the sha256, then renaming into place) and report progress.
`OperatorClient` is what `pvreal hub release|pause|resume|abort|status` send.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from pvreal.ctrl.client import Answer
from pvreal.durable import fsync_dir
from pvreal.hub.auth import beside
from shared import canonical
from shared.errors import PvError
from shared.state import is_sha256, parse_state

AUTO_TOKEN_HEADER = "Pantahub-Devices-Auto-Token-V1"
CHUNK = 1 << 16


class HubClientError(PvError):
    """The Hub refused a request, answered nonsense, or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ObjectHashMismatch(HubClientError):
    """A downloaded object's bytes do not hash to its name (the `.tmp` is deleted)."""


class HttpClient:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise HubClientError(f"Hub URL {url!r}: expected http://HOST:PORT")
        self.url, self.host, self.port = url.rstrip("/"), parts.hostname, parts.port or 80
        self.timeout = timeout
        self.token: str | None = None

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**headers, **(extra or {})}

    def request(self, method: str, path: str, body: Any = None,
                headers: Mapping[str, str] | None = None) -> Answer:  # fmt: skip
        raw = body is None or isinstance(body, bytes) or hasattr(body, "read")  # a file streams
        data = body if raw else canonical.dump_bytes(body)
        conn = self._connection()
        try:
            conn.request(method, path, body=data, headers=self._headers(headers))
            reply = conn.getresponse()
            return Answer(reply.status, reply.read(), dict(reply.getheaders()))
        except (OSError, http.client.HTTPException) as exc:
            raise HubClientError(f"Hub at {self.url} not reachable: {exc!r}") from None
        finally:
            conn.close()

    def checked(self, method: str, path: str, body: Any = None,
                headers: Mapping[str, str] | None = None) -> Any:  # fmt: skip
        """The decoded JSON answer, or HubClientError naming the request and the Hub's reason."""
        answer = self.request(method, path, body, headers)
        if not answer.ok:
            raise HubClientError(f"{method} {path}: {answer.status} {answer.error}", answer.status)
        try:
            return answer.json()
        except ValueError:
            raise HubClientError(f"{method} {path}: the answer is not JSON") from None


class DeviceClient(HttpClient):
    def __init__(self, url: str, device: str | None = None, timeout: float = 30.0) -> None:
        super().__init__(url, timeout)
        self.device = device

    def register(self, fleet_token: str, secret: str, nick: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"secret": secret} | ({"nick": nick} if nick else {})
        info = self.checked("POST", "/devices/", doc, {AUTO_TOKEN_HEADER: fleet_token})
        self.device = info["id"]
        return info

    def login(self, secret: str) -> None:
        if self.device is None:
            raise HubClientError("log in needs the device id (register first)")
        self.token = self.checked("POST", "/auth/login", {"username": self.device, "password": secret})["token"]

    def info(self) -> dict[str, Any]:
        return self.checked("GET", f"/devices/{self.device}")

    def put_meta(self, meta: Mapping[str, str | None]) -> dict[str, Any]:
        return self.checked("PATCH", f"/devices/{self.device}/device-meta", dict(meta))

    def steps(self, status: str | Iterable[str] = "NEW") -> list[dict[str, Any]]:
        """Steps whose progress status is `status`, or any of several (`{"$in": [...]}`)."""
        wanted = status if isinstance(status, str) else json.dumps({"$in": sorted(status)})
        return self.checked("GET", f"/trails/{self.device}/steps?progress.status={quote(wanted)}")

    def step(self, rev: int | str) -> dict[str, Any]:
        return self.checked("GET", f"/trails/{self.device}/steps/{rev}")

    def step_objects(self, rev: int | str) -> list[dict[str, Any]]:
        return self.checked("GET", f"/trails/{self.device}/steps/{rev}/objects")

    def put_progress(self, rev: int | str, progress: Mapping[str, Any]) -> dict[str, Any]:
        return self.checked("PUT", f"/trails/{self.device}/steps/{rev}/progress", dict(progress))

    def download(self, sha: str, folder: str | Path, *, url: str | None = None,
                 stop_after: int | None = None) -> Path:  # fmt: skip
        """Fetch object `sha` into `folder/<sha>`. Bytes go to `<sha>.tmp` first; a `.tmp` left by
        a cut download is resumed with `Range: bytes=<its size>-`. The file is renamed into place
        only when it hashes to `sha`; a mismatch deletes the `.tmp` so the next try starts over.
        `url` is the object's `signed-geturl` from `step_objects` (default: /objects/<sha>/blob);
        `stop_after` cuts the transfer after that many bytes (tests use it to cut a download)."""
        if not is_sha256(sha):
            raise HubClientError(f"not a sha256: {sha[:80]!r}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        target, tmp = folder / sha, folder / f"{sha}.tmp"
        if target.exists():
            return target
        have = tmp.stat().st_size if tmp.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        conn = self._connection()
        try:
            conn.request("GET", url or f"/objects/{sha}/blob", headers=self._headers(headers))
            reply = conn.getresponse()
            if reply.status == 416:  # the .tmp is already whole (or longer than the object)
                reply.read()
            elif reply.status not in (200, 206):
                answer = Answer(reply.status, reply.read(), dict(reply.getheaders()))
                raise HubClientError(f"GET object {sha}: {reply.status} {answer.error}", reply.status)
            else:
                self._receive(reply, tmp, append=reply.status == 206, stop_after=stop_after)
        except (OSError, http.client.HTTPException) as exc:  # a cut connection: keep the .tmp
            raise HubClientError(f"GET object {sha}: {exc!r}") from None
        finally:
            conn.close()
        if _sha256_of(tmp) != sha:
            tmp.unlink(missing_ok=True)
            raise ObjectHashMismatch(f"object {sha}: downloaded bytes do not match their name")
        os.replace(tmp, target)
        fsync_dir(folder)
        return target

    @staticmethod
    def _receive(reply: http.client.HTTPResponse, tmp: Path, *, append: bool,
                 stop_after: int | None) -> None:  # fmt: skip
        received = 0
        with open(tmp, "ab" if append else "wb") as out:
            while chunk := reply.read1(CHUNK):  # what has arrived: a cut keeps every byte
                if stop_after is not None and received + len(chunk) >= stop_after:
                    out.write(chunk[: stop_after - received])
                    raise HubClientError(f"download cut after {stop_after} B")
                out.write(chunk)
                received += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if reply.length:  # the connection closed before Content-Length bytes: resume later
            raise HubClientError(f"download cut after {received} B, {reply.length} B missing")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class OperatorClient(HttpClient):
    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        super().__init__(url, timeout)
        self.token = token

    def put_object(self, path: str | Path) -> dict[str, Any]:
        path = Path(path)
        sha, size = _sha256_of(path), path.stat().st_size
        with open(path, "rb") as f:
            return self.checked("PUT", f"/operator/objects/{sha}", f, {"Content-Length": str(size)})

    def release(self, name: str, state: Mapping[str, Any], strategy: str,
                options: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
        doc = {"name": name, "state": dict(state), "strategy": strategy, "options": dict(options)}
        return self.checked("POST", "/operator/releases", doc)

    def operate(self, name: str, action: str) -> dict[str, Any]:
        return self.checked("POST", f"/operator/releases/{name}/{action}")

    def status(self) -> dict[str, Any]:
        return self.checked("GET", "/operator/status")


def operator_for(db: str | Path, url: str | None = None, token: str | None = None) -> OperatorClient:
    """The operator client for the Hub serving `db`: its URL and token come from the files the
    Hub wrote beside the database unless given."""
    def read(suffix: str, given: str | None, flag: str) -> str:
        if given:
            return given
        path = beside(db, suffix)
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            raise HubClientError(f"{path} not found: is `pvreal hub serve --db {db}` running "
                                 f"here? (or pass {flag})") from None  # fmt: skip

    return OperatorClient(read("url", url, "--hub URL"),
                          read("operator-token", token, "--operator-token"))  # fmt: skip


def publish(client: OperatorClient, state_path: str | Path, name: str, strategy: str,
            options: Mapping[str, Any], objects_dir: str | Path) -> dict[str, Any]:  # fmt: skip
    """Send the objects a state names that `objects_dir` holds (as `<sha>` files), then create
    the release; the Hub refuses it naming any object it still lacks."""
    state_path, objects_dir = Path(state_path), Path(objects_dir)
    data = state_path.read_bytes()
    doc = canonical.loads_object(data, source=str(state_path))
    state = parse_state(doc, source=str(state_path))
    sent = 0
    for sha in sorted(state.object_shas()):
        if (objects_dir / sha).is_file():
            client.put_object(objects_dir / sha)
            sent += 1
    return {**client.release(name, doc, strategy, options), "objects_sent": sent}
