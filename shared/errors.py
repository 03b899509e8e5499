"""Errors the user sees: each names where the problem is (file and key) and what was expected."""

from __future__ import annotations


class PvError(Exception):
    """Base of every error pvtwin reports to a person. `source` is a file name or a label."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.message = message
        self.source = source
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.source and self.key is not None:
            where = f"{self.source}: key {self.key!r}: "
        elif self.source:
            where = f"{self.source}: "
        elif self.key is not None:
            where = f"key {self.key!r}: "
        return where + self.message


class InvalidJson(PvError):
    """Text that is not valid JSON, or JSON with duplicate keys, or not an object at the root."""


class InvalidState(PvError):
    """A state JSON that Pantavisor's parser would reject."""


class SignatureError(PvError):
    """A pvs@2 signature that is malformed, untrusted or does not match the state."""
