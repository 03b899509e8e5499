"""Canonical JSON: sorted keys, no whitespace, UTF-8 kept as is.

Pantavisor's device rebuilds signed payloads in the order entries appear in the stored state, while
pvr signs canonical JSON; the two agree only when the stored state is canonical. pvtwin therefore
writes every state in this one form.
"""

from __future__ import annotations

import json
from typing import Any

from shared.errors import InvalidJson


def dumps(value: Any) -> str:
    """The canonical text of a JSON value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dump_bytes(value: Any) -> bytes:
    return dumps(value).encode("utf-8")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise InvalidJson("duplicate key in JSON object", key=key)
        seen[key] = value
    return seen


def loads(text: str | bytes, *, source: str | None = None, allow_duplicates: bool = False) -> Any:
    """Parse JSON text; duplicate keys are an error unless `allow_duplicates` (then last wins)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"not UTF-8 text: {exc}", source=source) from None
    hook = None if allow_duplicates else _reject_duplicates
    try:
        return json.loads(text, object_pairs_hook=hook)
    except InvalidJson as exc:
        raise InvalidJson(exc.message, source=source, key=exc.key) from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(
            f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", source=source
        ) from None
    except RecursionError:  # arrays or objects nested a thousand deep: refused, not a crash
        raise InvalidJson("JSON nested too deeply to parse", source=source) from None


def loads_object(text: str | bytes, *, source: str | None = None) -> dict[str, Any]:
    """Parse JSON text whose root must be an object."""
    value = loads(text, source=source)
    if not isinstance(value, dict):
        raise InvalidJson(f"root must be a JSON object, found {type(value).__name__}", source=source)
    return value


def is_canonical(text: str | bytes) -> bool:
    """True when `text` is exactly the canonical form of the JSON it holds (no duplicate keys)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return False
    try:
        value = loads(text)
    except InvalidJson:
        return False
    return dumps(value) == text
