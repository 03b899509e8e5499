"""A small QMP client (QEMU Machine Protocol) over a Unix socket: JSON lines, one command at a time."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

from shared.errors import PvError


class QmpError(PvError):
    """QEMU answered a command with an error, or the socket failed."""


class QmpClient:
    """`with QmpClient(path) as qmp: qmp.command("query-status")`; asynchronous events are kept."""

    def __init__(self, path: Path | str, *, timeout: float = 10.0):
        self.path = str(path)
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._sock: socket.socket | None = None
        self._buffer = b""

    def connect(self, *, wait: float = 10.0) -> QmpClient:
        """Connect (retrying while QEMU creates the socket), read the greeting, enter command mode."""
        deadline = time.monotonic() + wait
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise QmpError(f"no QMP socket at {self.path}", source=self.path) from None
                time.sleep(0.05)
        self._sock = sock
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpError(f"not a QMP greeting: {greeting}", source=self.path)
        self.command("qmp_capabilities")
        return self

    def _read(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QmpError("QMP socket closed by QEMU", source=self.path)
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def command(self, name: str, **arguments: Any) -> Any:
        """Run one command; its "return" value, or QmpError with QEMU's error description."""
        if self._sock is None:
            raise QmpError("not connected", source=self.path)
        message: dict[str, Any] = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise QmpError(
                    f"{name}: {reply['error'].get('desc', reply['error'])}",
                    key=name,
                    source=self.path,
                )
            return reply.get("return")

    def system_reset(self) -> None:
        self.command("system_reset")

    def query_status(self) -> dict[str, Any]:
        return self.command("query-status")

    def quit(self) -> None:
        """Ask QEMU to exit; the socket closing under us is the expected outcome."""
        with contextlib.suppress(QmpError, OSError):
            self.command("quit")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> QmpClient:
        return self.connect() if self._sock is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()
