"""Read a revision's state JSON from a file, a trail folder (its `.pvr/json`) or stdin (`-`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from shared import canonical
from shared.errors import InvalidJson, InvalidState
from shared.state import State, parse_state


def read_state_bytes(spec: str) -> tuple[bytes, str]:
    """The bytes of STATE and the name to report: a file, a trail directory (its .pvr/json) or
    `-` for stdin."""
    if spec == "-":
        return sys.stdin.buffer.read(), "<stdin>"
    path = Path(spec)
    if path.is_dir():
        for candidate in (path / ".pvr" / "json", path / "json"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise InvalidState("directory holds neither .pvr/json nor json", source=spec)
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise InvalidJson(f"cannot read: {exc.strerror}", source=spec) from None


def read_state(spec: str, *, partial: bool = False) -> State:
    """Parse STATE (see read_state_bytes)."""
    data, source = read_state_bytes(spec)
    return parse_state(data, source=source, partial=partial)


def read_state_json(spec: str) -> tuple[dict[str, Any], str]:
    """The raw state JSON of STATE (see read_state_bytes) and the name to report."""
    data, source = read_state_bytes(spec)
    return canonical.loads_object(data, source=source), source
