"""Dataclass methods compiled at build time, so PID 1 does not compile them at every boot.

CPython 3.11's `dataclasses` writes each generated method (`__init__`, `__repr__`, `__eq__`, ...)
as source text and compiles it with `exec` when the class is defined. The daemon defines a few
hundred dataclasses on its way up (the engine's events and commands, the state model, pyroute2's
messages), and on the host that compiling is about a quarter of its import time; under TCG it is
most of a second of every boot.

At build time `record` imports what the daemon imports, with `dataclasses`' `exec` replaced by one
that keeps each source text's code object, and writes them all in one marshal file. In the guest,
`install` (called by /init before anything else is imported) loads that file and gives
`dataclasses` an `exec` that runs the kept code object for a text it has seen and compiles any
other text as before. Nothing changes but where the compiling happens: the text is the key, so a
class whose generated source differs (another pvtwin, another Python) simply misses the cache.
Marshal data is tied to the interpreter version, which is why the guest runs the build's own
interpreter (pvreal.qemu.initramfs).
"""

import builtins
import marshal
import subprocess
import sys
from pathlib import Path

CACHE_NAME = "dataclass-methods.marshal"  # beside the daemon's packages in the guest

# What the daemon imports from PID 1 to "device up" (pvreal.qemu.guest_init.hand_over and the
# device's start); a module imported later only misses the cache.
DAEMON_MODULES = (
    "pvreal.qemu.guest_init",
    "pvreal.device.guest",
    "pvreal.netns",
    "pyroute2.iproute",
    "pvreal.ctrl.server",
)


STATS = {"hits": 0, "misses": 0}  # of compiles asked for after install (tests, diagnostics)


def install(path: str) -> int:
    """Serve `dataclasses`' compiles from the cache at `path`; the number of kept methods (0, and
    nothing changed, when the file is missing or unreadable)."""
    try:
        with open(path, "rb") as f:
            codes = marshal.load(f)
    except (OSError, ValueError, EOFError, TypeError):
        return 0
    if not isinstance(codes, dict):
        return 0
    import dataclasses

    run = builtins.exec

    def exec_kept(source, globals=None, locals=None):  # noqa: A002 - exec's own parameter names
        code = codes.get(source) if isinstance(source, str) else None
        STATS["misses" if code is None else "hits"] += 1
        return run(source if code is None else code, globals, locals)

    dataclasses.exec = exec_kept  # type: ignore[attr-defined]  # shadows the builtin there only
    return len(codes)


def record(out: Path, *, python: str = sys.executable, path: Path | None = None) -> int:
    """Write the cache to `out` from a fresh `python` that imports DAEMON_MODULES (with `path`
    first on its sys.path, as in the guest); the number of methods kept."""
    first = [str(path)] if path is not None else []
    code = (
        f"import sys; sys.path[:0] = {first!r}\n"
        "from pvreal.qemu.methodcache import _record_here\n"
        f"print(_record_here({str(out)!r}))\n"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"recording dataclass methods failed: {done.stderr.strip()[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1])


def _record_here(out: str) -> int:
    """In a fresh interpreter: import the daemon's modules, keeping every method compiled."""
    import dataclasses
    import importlib

    codes: dict[str, object] = {}
    run = builtins.exec

    def exec_keeping(source, globals=None, locals=None):  # noqa: A002
        if isinstance(source, str):
            # dont_inherit: compiled with no __future__ flags, as dataclasses' own exec does
            source = codes.setdefault(source, compile(source, "<string>", "exec", dont_inherit=True))
        return run(source, globals, locals)

    dataclasses.exec = exec_keeping  # type: ignore[attr-defined]
    from pvreal.qemu.guest_init import lean_pyroute2  # after the hook: it defines dataclasses too

    lean_pyroute2()  # the guest's pyroute2, so the same classes are defined
    for name in DAEMON_MODULES:
        importlib.import_module(name)
    tmp = Path(out + ".tmp")
    tmp.write_bytes(marshal.dumps(codes))
    tmp.replace(out)
    return len(codes)
