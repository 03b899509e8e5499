"""Errors the user sees: each names where the problem is (file and key) and what was expected."""

from __future__ import annotations

from collections.abc import Callable

# Exit codes of both command lines: 0 ok, 1 invalid input or a failed check, 2 a usage error
# (argparse's own), 130 interrupted (the shell's 128 + SIGINT).
EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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


def run_command(prog: str, command: Callable[[], int | None], say: Callable[[str | None], None]) -> int:
    """Run one parsed command and turn what a person should see into an exit code.

    The I/O stays the caller's, so this stays pure: `say(line)` writes a line to stderr, and
    `say(None)` means stdout's reader went away (`| head`), which is not an error of ours and
    must stay silent."""
    try:
        return int(command() or 0)
    except PvError as exc:
        say(f"{prog}: error: {exc}")
        return EXIT_INVALID
    except KeyboardInterrupt:
        say(f"{prog}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        say(None)
        return EXIT_OK
