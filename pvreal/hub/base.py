"""What both sides of the Hub share: its database connection, object store and clock, the error
every method raises for client mistakes, and the small JSON checks."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pvreal.hub.objects import ObjectStore
from shared.rollout import Controller

MAX_META_BYTES = 16 << 10  # one device's metadata, encoded
MAX_META_KEYS = 64
MAX_PROGRESS_BYTES = 64 << 10  # a progress record with its logs
NICK_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,62}\Z")
META_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,127}\Z")
SUCCEEDED, FAILED = "succeeded", "failed"


class HubError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def prn(device: str) -> str:
    return f"prn:::devices:/{device}"


def json_object(doc: Any, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise HubError(400, f"{what} must be a JSON object")
    return doc


def json_string(doc: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise HubError(400, f"{key} must be a string")
    return value


class HubBase:
    """The Hub's state: one SQLite connection (used from one thread at a time), the object
    store, the fleet's registration token and the clock."""
    def __init__(
        self,
        conn: sqlite3.Connection,
        objects: ObjectStore,
        *,
        device_token: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.conn = conn
        self.objects = objects
        self.device_token = device_token
        self.clock = clock

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def tick(self, name: str, action: Callable[[Controller, float], None] | None = None) -> str:
        """Ask the release's rollout controller what to do now (the operator side answers)."""
        raise NotImplementedError
