"""Errors of the boot environment codecs and stores. Each names the file and, when known, the key."""

from __future__ import annotations

from shared.errors import PvError


class BootEnvError(PvError):
    """Base of every boot environment problem."""


class EnvCorrupt(BootEnvError):
    """Bytes that are not a valid environment of the expected format (bad header, size, CRC...)."""


class EnvFull(BootEnvError):
    """The variables do not fit in the fixed-size block; nothing was written."""


class InvalidEntry(BootEnvError):
    """A key or value the format cannot store (for example a key with `=` or a NUL byte)."""


def check_entry(
    key: str,
    value: str,
    *,
    source: str | None,
    bad_key_chars: str,
    bad_value_chars: str = "\0",
) -> None:
    """Reject a key/value pair the format would store wrongly or not at all.

    Every format splits an entry at its first `=` and ends strings at NUL, so `=` and NUL are
    always refused in keys and NUL in values; each format adds its own separators.
    """
    if not key:
        raise InvalidEntry("empty variable name", source=source, key=key)
    for char in bad_key_chars:
        if char in key:
            raise InvalidEntry(
                f"variable name contains {_show(char)}, which this format cannot store",
                source=source,
                key=key,
            )
    for char in bad_value_chars:
        if char in value:
            raise InvalidEntry(
                f"value contains {_show(char)}, which this format cannot store",
                source=source,
                key=key,
            )


def _show(char: str) -> str:
    return {"\0": "a NUL byte", "\n": "a newline", "=": "'='"}.get(char, repr(char))
