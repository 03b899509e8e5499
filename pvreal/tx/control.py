"""pvtx's calls to pv-ctrl (`begin current`, remote objects, `commit`), made with the project's
one pv-ctrl client and answered with pvtx's errors and exit statuses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pvreal.ctrl.client import Answer, CtrlClient, CtrlError, first_listening
from pvreal.tx.errors import TxError

CONTROL_SOCKETS = ("/run/pantavisor/pv/pv-ctrl", "/pv/pv-ctrl", "/pantavisor/pv-ctrl")
SOCKET_ENV = "PVTX_SOCKET"


class ControlClient:
    """`path=None` tries Pantavisor's usual socket paths; the first that answers is kept."""

    def __init__(self, path: str | None = None, timeout: float = 30.0):
        self.candidates: tuple[str, ...] = (path,) if path else CONTROL_SOCKETS
        self.timeout = timeout
        self._client: CtrlClient | None = None

    def current_state(self) -> bytes:
        return self._call("begin current", "GET", "/steps/current",
                          lambda client: client.request("GET", "/steps/current"))

    def put_object(self, sha: str, path: Path) -> None:
        self._call("uploading an object", "PUT", f"/objects/{sha}",
                   lambda client: client.put_object(sha, path))

    def put_step(self, revision: str, state: bytes) -> None:
        self._call("commit", "PUT", f"/steps/{revision}",
                   lambda client: client.put_step(revision, state))

    def _call(self, what: str, method: str, url: str,
              send: Callable[[CtrlClient], Answer]) -> bytes:
        try:
            answer = send(self._connected(what))
        except CtrlError as exc:
            raise TxError(f"{what}: {exc}") from None
        if not answer.ok:
            detail = answer.body.decode("utf-8", "replace").strip()[:200]
            # pvtx keeps -status as its error code; the exit status is that modulo 256.
            raise TxError(f"{what}: {method} {url} answered {answer.status} {detail}".strip(),
                          exit_code=(-answer.status) % 256)
        return answer.body

    def _connected(self, what: str) -> CtrlClient:
        if self._client is None:
            try:
                self._client = first_listening(self.candidates, self.timeout)
            except CtrlError as exc:
                raise TxError(
                    f"{what} needs a running device's control socket (pv-ctrl); pass "
                    f"--socket PATH or set {SOCKET_ENV}: {exc.message}"
                ) from None
        return self._client
