"""pv-ctrl's HTTP/1.1 server on a Unix socket: http.server + socketserver, nothing hand-parsed.

One server per socket. The device's own socket (`--socket`) has the full API (the `mgmt` view);
each container gets a socket of its own, bind-mounted at /pantavisor/pv-ctrl, which knows which
container it serves (that is how `POST /signal` knows who is ready) and, unless the container has
role `mgmt`, answers only `/signal` (403 otherwise), as Pantavisor does (§4.4, §5.1).

Sockets are created with mode 0600: bound under a temporary name in a private (0700) folder,
chmod-ed, then renamed into place, so there is no moment at which another user could connect.

Whatever arrives, the answer is JSON (`{"Error": ...}`), http.server's own refusals included
(malformed request line, unknown method, oversized headers), a connection idle for
IDLE_TIMEOUT_S is closed, and a request body is never read into memory beyond its endpoint's
limit (`shared.engine.ctrl`: MAX_COMMAND_BYTES, MAX_STATE_BYTES).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socketserver
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from pvreal.ctrl.api import CtrlApi, Response
from shared.engine.ctrl import MAX_COMMAND_BYTES, body_size_decision, endpoint_decision

if TYPE_CHECKING:
    from pvreal.device.daemon import Device

log = logging.getLogger(__name__)
IDLE_TIMEOUT_S = 30.0  # a connection that sends nothing for this long is closed
_DIGITS = re.compile(r"[0-9]{1,18}\Z")  # a Content-Length (up to an exabyte)
DRAIN_AFTER_REFUSAL = 64 << 20  # bytes of a refused body read (and dropped) before hanging up


class CtrlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 128  # listen backlog: socketserver's 5 refuses (EAGAIN) a busy moment

    def __init__(self, path: Path, api: CtrlApi, *, container: str | None, mgmt: bool):
        self.path = Path(path)
        self.api = api
        self.container = container
        self.mgmt = mgmt
        self._thread: threading.Thread | None = None
        super().__init__(str(path), CtrlHandler, bind_and_activate=False)

    def server_bind(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix=".pv-ctrl-", dir=self.path.parent))
        try:
            os.chmod(private, 0o700)
            tmp = private / "sock"
            self.socket.bind(str(tmp))
            os.chmod(tmp, 0o600)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(OSError):
                private.rmdir()
        self.server_address = str(self.path)

    def start(self) -> CtrlServer:
        self.server_bind()
        self.server_activate()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
            name=f"pv-ctrl:{self.container or 'device'}",
        )
        self._thread.start()
        return self

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request thread ended with an exception (the peer went away mid-request, mostly):
        logged, and the server goes on."""
        log.debug("pv-ctrl connection ended with an error", exc_info=True)

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def serve(
    path: Path, api: CtrlApi, *, container: str | None = None, mgmt: bool = True
) -> CtrlServer:
    """Bind and serve one pv-ctrl socket in a thread."""
    return CtrlServer(path, api, container=container, mgmt=mgmt).start()


def serve_device(device: Device, socket_path: Path) -> CtrlServer:
    """The device's own socket, plus a socket per container (bind-mounted by the runner)."""
    api = CtrlApi(device)
    sockets = device.ctrl_dir

    def open_for_container(name: str, mgmt: bool) -> tuple[Path, CtrlServer]:
        path = sockets / f"{name}.sock"
        return path, serve(path, api, container=name, mgmt=mgmt)

    device.runner.ctrl_opener = open_for_container
    return serve(socket_path, api)


class CtrlHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CtrlServer
    timeout = IDLE_TIMEOUT_S  # socketserver applies it to every recv

    # AF_UNIX peers have no address; http.server would index into an empty string.
    def address_string(self) -> str:
        return self.server.container or "pv-ctrl"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        log.debug("%s: " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":  # a bare `GET /path`: no status line, no headers
            self.send_error(400, "HTTP/0.9 requests are not served")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's refusals (bad request line, unknown method, long headers) as JSON, like
        every other answer, instead of its HTML page, and always with a status line (http.server
        leaves it out while the request's version is unknown)."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.log_error("code %d, message %s", code, message)
        self.request_version = self.protocol_version
        self.close_connection = True
        self._send(Response.error(code, message or phrase))

    # ------------------------------------------------------------------ routing

    def _dispatch(self, method: str) -> None:
        length = self._length(method)
        if length is None:
            return
        body = _Body(self.rfile, length)
        try:
            response = self._answer(method, body, length)
            # Whatever the handler did not read: the client may still be sending, and answers
            # only once it is done. A refusal drains a bounded amount, then hangs up.
            body.drain(None if response.status < 400 else DRAIN_AFTER_REFUSAL)
        except (TimeoutError, ConnectionError):  # the client stalled or left: nobody to answer
            self.close_connection = True
            return
        except Exception as exc:  # a handler bug must not kill the connection silently
            log.exception("pv-ctrl %s %s", method, self.path[:200])
            response = Response.error(500, f"internal error: {exc}")
        self._send(response)

    def _answer(self, method: str, body: _Body, length: int) -> Response:
        try:
            parts = [unquote(p) for p in urlsplit(self.path).path.split("/")[1:]]
        except ValueError as exc:  # e.g. an unbalanced '[' taken for an IPv6 host
            return Response.error(400, f"bad request target: {exc}")
        allowed = endpoint_decision(parts, mgmt=self.server.mgmt)
        if not allowed.accepted:
            return Response.decision(allowed)
        return self._route(method, parts, body, length)

    def _route(self, method: str, parts: list[str], body: _Body, length: int) -> Response:
        api = self.server.api
        match method, parts:
            case "PUT", ["objects", sha]:
                return api.put_object(sha, body, length)
            case "GET", ["objects"]:
                return api.list_objects()
            case "PUT", ["steps", "locals", name]:
                return api.put_step(name, body, length, self.headers.get("Content-Type", ""))
            case "GET", ["steps"]:
                return api.list_steps()
            case "GET", ["steps", "locals", name, "progress"]:
                return api.get_progress("locals/" + name)
            case "GET", ["steps", rev, "progress"]:
                return api.get_progress(rev)
            case "GET", ["steps", "locals", name]:
                return api.get_step("locals/" + name)
            case "GET", ["steps", rev]:
                return api.get_step(rev)
            case "POST", ["commands"]:
                return _small(length, "command") or api.post_command(body.read())
            case "POST", ["signal"]:
                return _small(length, "signal") or api.signal(self.server.container, body.read())
            case "GET", ["containers"]:
                return api.containers()
            case "GET", ["buildinfo"]:
                return api.buildinfo()
            case "GET", ["status"]:
                return api.status()
        return Response.error(404, f"no endpoint {method} {self.path[:200]}")

    # ------------------------------------------------------------------ bodies

    def _length(self, method: str) -> int | None:
        """The body's length, or None after a refusal: a body without Content-Length (chunked)
        or with several, or one that is not a plain number, cannot be delimited safely."""
        values = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding"):
            status = 400 if values else 411
            return self._refuse(status, "send a Content-Length, not a Transfer-Encoding")
        if not values:
            return 0
        raw = values[0].strip()
        if len(values) > 1 or not _DIGITS.match(raw):
            return self._refuse(400, f"bad Content-Length {', '.join(values)[:40]!r}")
        return int(raw)

    def _refuse(self, status: int, message: str) -> None:
        self.close_connection = True
        self._send(Response.error(status, message))
        return None

    def _send(self, response: Response) -> None:
        body = response.body
        if isinstance(body, bytes):
            data, ctype = body, "application/json"
        elif body is None:
            data, ctype = b"", "application/json"
        else:
            data, ctype = json.dumps(body, sort_keys=True).encode() + b"\n", "application/json"
        if response.status >= 400:
            self.close_connection = True  # the body may not have been read to its end
        try:
            self.send_response(response.status)
            if response.status != 204:  # a 204 carries neither a body nor its length (RFC 9110)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if response.status != 204:
                self.wfile.write(data)
        except (ConnectionError, TimeoutError):  # the client left, or stopped reading
            self.close_connection = True


def _small(length: int, what: str) -> Response | None:
    """413 for a command or signal body over MAX_COMMAND_BYTES (never read into memory)."""
    fits = body_size_decision(length, MAX_COMMAND_BYTES, f"{what} body")
    return None if fits.accepted else Response.decision(fits)


class _Body:
    """The request body: at most Content-Length bytes, the rest drained after the handler."""

    def __init__(self, raw: Any, length: int):
        self.raw, self.left = raw, length

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self.raw.read(size)
        self.left -= len(data)
        if not data:
            self.left = 0  # the client closed early
        return data

    def drain(self, limit: int | None = None) -> None:
        """Read and drop the rest, or at most `limit` bytes of it."""
        budget = self.left if limit is None else min(limit, self.left)
        while budget > 0 and (chunk := self.read(min(1 << 20, budget))):
            budget -= len(chunk)
