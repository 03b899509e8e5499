"""DIR/fleet.json: everything a fleet created, so `fleet down` can remove it from any process.

Written durably (temp file, fsync, rename) before each thing is created and after each change,
under an flock on DIR/fleet.lock so a fault command and the `up` process never interleave their
read-modify-write.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pvreal.durable import atomic_write
from shared.errors import PvError

STATE = "fleet.json"
VERSION = 1


def state_path(folder: Path) -> Path:
    return folder / STATE


def load(folder: Path) -> dict[str, Any]:
    path = state_path(folder)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise PvError(f"{path}: no fleet here (pvreal fleet up first)") from None
    if doc.get("version") != VERSION:
        raise PvError(f"{path}: fleet state version {doc.get('version')!r}, expected {VERSION}")
    return doc


def save(folder: Path, doc: dict[str, Any]) -> None:
    # 0600: it holds the fleet's device token
    atomic_write(state_path(folder), (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(),
                 mode=0o600)


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "fleet.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def editing(folder: Path) -> Iterator[dict[str, Any]]:
    """Load, let the caller change, save; under the lock."""
    with locked(folder):
        doc = load(folder)
        yield doc
        save(folder, doc)


def device(doc: dict[str, Any], name: str) -> dict[str, Any]:
    for dev in doc["devices"]:
        if dev["name"] == name:
            return dev
    names = ", ".join(d["name"] for d in doc["devices"]) or "none"
    raise PvError(f"no device {name!r} in this fleet (devices: {names})")
