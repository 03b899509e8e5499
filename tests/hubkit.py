"""Helpers for the Hub's tests: a release with real objects, a Hub in a thread, fake devices."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

from pvreal.hub.client import DeviceClient
from pvreal.hub.server import HubFiles
from shared.state import is_sha256

EXAMPLE = Path(__file__).resolve().parent.parent / "pvreal" / "examples" / "rev1-app.json"


def write_release(folder: Path, tag: str = "v1", name: str = "rev1.json") -> tuple[Path, Path]:
    """The example app revision with every object replaced by real bytes (`<path> <tag>`), as
    STATE and objects/<sha> in `folder`; returns (state path, objects folder)."""
    state = json.loads(EXAMPLE.read_text())
    objects = folder / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    for key, value in list(state.items()):
        if is_sha256(value):
            data = f"{key} {tag}\n".encode() * 64
            sha = hashlib.sha256(data).hexdigest()
            (objects / sha).write_bytes(data)
            state[key] = sha
    path = folder / name
    path.write_text(json.dumps(state, sort_keys=True))
    return path, objects


def hub_files(folder: Path) -> HubFiles:
    return HubFiles.prepare(folder / "hub.sqlite")


def device(url: str, files: HubFiles, nick: str) -> DeviceClient:
    """A registered, logged-in fake device (a plain HTTP client, not the real device)."""
    client = DeviceClient(url)
    secret = secrets.token_hex(16)
    client.register(files.device_token, secret, nick)
    client.login(secret)
    return client
