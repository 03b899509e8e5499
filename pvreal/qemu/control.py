"""The host's side of a QEMU device: its pv-ctrl socket over a loopback TCP port, updates pushed
through it, and waits that survive the guest rebooting underneath.

QEMU forwards `127.0.0.1:<port>` (user networking with `restrict=on`: the guest reaches nothing,
only this forward reaches it) to the guest, where pvreal.device.guest splices each connection
to /run/pv-ctrl. Plain HTTP/1.1, one connection per request, exactly as over the Unix socket.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import time
from collections.abc import Mapping
from typing import Any

from pvreal.ctrl.client import Answer, CtrlClient, CtrlError
from pvreal.objectstore import ObjectStore, is_sha
from shared import canonical

PROBE_TIMEOUT = 3.0  # s, for polls while the guest may be rebooting (TcpCtrlClient.probe_status)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for QEMU's hostfwd)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TcpCtrlClient(CtrlClient):
    """`CtrlClient` over 127.0.0.1:<port> instead of a Unix socket."""

    def __init__(self, port: int, timeout: float = 60.0):
        super().__init__(f"127.0.0.1:{port}", timeout)
        self.port = port

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)

    def probe_status(self) -> dict[str, Any]:
        """/status with a short timeout: while the guest boots, QEMU's forward accepts the
        connection at once and then waits for the guest's TCP stack (retransmits back off to
        seconds), so a long timeout would sit out that backoff instead of trying again."""
        probe = TcpCtrlClient(self.port, timeout=PROBE_TIMEOUT)
        return probe.status()

    def wait_up(self, timeout: float) -> dict[str, Any]:
        """Poll /status until the device answers with a booted revision; its status."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                status = self.probe_status()
                if status.get("booted"):
                    return status
            except CtrlError as exc:
                last = exc
            time.sleep(0.5)
        raise CtrlError(f"the device did not answer within {timeout} s: {last}", source=self.path.name)

    def push(self, rev: str, state: Mapping[str, Any], objects: ObjectStore) -> None:
        """Upload the objects the device lacks, then the state as steps/<rev> (not run yet)."""
        have = {o["sha256"] for o in self.checked("GET", "/objects").json()}
        for value in state.values():
            if is_sha(value) and value not in have:
                answer = self.put_object(value, objects.path(value))
                if not answer.ok:
                    raise CtrlError(f"PUT /objects/{value}: {answer.status} {answer.error}",
                                    source=str(objects.path(value)))
                have.add(value)
        answer = self.put_step(rev, canonical.dump_bytes(dict(state)))
        if not answer.ok:
            raise CtrlError(f"PUT /steps/{rev}: {answer.status} {answer.error}", source=rev)

    def command_retry(self, op: str, payload: str = "", timeout: float = 120.0) -> Answer:
        """POST /commands, retried while the device answers 503 (busy) or is rebooting."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(CtrlError):
                answer = self.command(op, payload)
                if answer.status != 503:
                    return answer
            if time.monotonic() > deadline:
                raise CtrlError(f"{op} {payload}: not accepted within {timeout} s", source=op)
            time.sleep(1.0)
