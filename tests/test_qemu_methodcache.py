"""pvreal.qemu.methodcache: dataclass methods compiled at build time for the guest's PID 1.

No QEMU needed: the cache is recorded by a fresh interpreter as the build does, then installed in
another, which defines the daemon's classes from it; what the classes do must not change.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pvreal.qemu import methodcache

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
from pvreal.qemu import methodcache
kept = methodcache.install(sys.argv[1])
import dataclasses
from shared.engine import events
from pvreal.qemu.guest_init import lean_pyroute2
lean_pyroute2()
import pvreal.device.guest, pvreal.netns, pyroute2.iproute  # what the daemon imports
@dataclasses.dataclass(frozen=True)
class NotInTheCache:
    a_field_nobody_else_has: int = 3
one = NotInTheCache()
print(json.dumps({"kept": kept, **methodcache.STATS, "repr": repr(one),
                  "equal": one == NotInTheCache(), "patched": hasattr(dataclasses, "exec")}))
"""


def _probe(cache: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(cache)], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_daemons_dataclass_methods_come_from_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / methodcache.CACHE_NAME
    kept = methodcache.record(cache, path=REPO)
    assert kept > 200  # the engine's events and commands alone define ~40 classes, ~6 methods each
    seen = _probe(cache)
    assert seen["kept"] == kept and seen["patched"]
    # every method the daemon's imports define was compiled at build time; only the class
    # defined here, which the build never saw, is compiled now (and still works)
    assert seen["hits"] >= 200
    assert 1 <= seen["misses"] <= 6
    assert seen["repr"] == "NotInTheCache(a_field_nobody_else_has=3)" and seen["equal"]


def test_a_missing_or_damaged_cache_changes_nothing(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.marshal"
    damaged.write_bytes(b"\x00not marshal data")
    for path in (tmp_path / "absent.marshal", damaged):
        seen = _probe(path)
        assert seen["kept"] == 0 and not seen["patched"]
        assert seen["hits"] == seen["misses"] == 0
        assert seen["repr"] == "NotInTheCache(a_field_nobody_else_has=3)" and seen["equal"]
