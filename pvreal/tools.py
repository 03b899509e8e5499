"""Running external tools (mksquashfs, veritysetup, mount, runc): one place for the error rule.

Modules that shell out take a `Runner` so unit tests can record the argv instead of running it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence

from shared.errors import PvError

Runner = Callable[[Sequence[str]], str]  # argv -> stdout text; raises ToolError on failure


# Which Debian package provides a tool, for the "not found" message.
PACKAGES = {
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "veritysetup": "cryptsetup-bin",
    "runc": "runc",
    "mount": "mount",
    "busybox": "busybox-static",
}


class ToolError(PvError):
    """An external tool is missing or failed; the message carries its stderr."""


def _not_found(tool: str) -> ToolError:
    package = PACKAGES.get(tool)
    hint = f" (install the Debian package {package})" if package else ""
    return ToolError(f"{tool} not found on PATH{hint}", source=tool)


def require(tool: str) -> str:
    """The full path of `tool`, or a ToolError telling which package provides it."""
    path = shutil.which(tool)
    if path is None:
        raise _not_found(tool)
    return path


def available(*tool_names: str) -> bool:
    return all(shutil.which(t) for t in tool_names)


def run(argv: Sequence[str], *, timeout: float = 120.0) -> str:
    """Run a tool to completion; its stdout on success, ToolError with its stderr otherwise."""
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise _not_found(argv[0]) from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"timed out after {timeout} s: {' '.join(argv)}", source=argv[0]) from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise ToolError(
            f"exit status {done.returncode} from {' '.join(argv)}: {detail}", source=argv[0]
        )
    return done.stdout
