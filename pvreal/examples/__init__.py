"""A small bundled revision set for the README and `make demo`.

- rev0.json: a BSP, a system-policy platform container `pv-avahi` and an app container `web`.
- rev1-app.json: only `web` changed (new root.squashfs and config) → a non-reboot update.
- rev2-bsp.json: rev1 with a new kernel → a reboot update.

Object values are sha256 digests of short made-up texts: valid state JSON, no real images.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

EXAMPLES = ("rev0.json", "rev1-app.json", "rev2-bsp.json")


def example(name: str) -> Traversable:
    """The bundled example file `name` (one of EXAMPLES)."""
    if name not in EXAMPLES:
        raise KeyError(f"no bundled example {name!r}; choose one of {', '.join(EXAMPLES)}")
    return files(__name__) / name
