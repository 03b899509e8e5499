"""A revision's extra kernel command line for the QEMU GRUB latch.

`bsp/run.json` may carry `cmdline` (a pvtwin extension: Pantavisor keeps the kernel command line
in the bootloader). GRUB cannot parse JSON, so when a trail is linked the arguments are also
written to `trails/<rev>/.pv/pv-cmdline.env`, a grubenv block holding `pv_cmdline`, which the
latch loads with `load_env` for the revision it boots and appends to `linux`. A revision without
`cmdline` gets no file (GRUB then appends nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pvreal.bootenv import grub as grub_layout
from pvreal.durable import atomic_write
from pvreal.qemu.grub import CMDLINE_ENV


def bsp_cmdline(state: Mapping[str, Any]) -> str:
    run = state.get("bsp/run.json")
    value = run.get("cmdline") if isinstance(run, Mapping) else None
    return value if isinstance(value, str) else ""


def write_cmdline_env(pv_dir: Path, state: Mapping[str, Any]) -> Path | None:
    """Write (or remove) `pv_dir/pv-cmdline.env` for the revision `state`."""
    target = pv_dir / CMDLINE_ENV
    cmdline = bsp_cmdline(state)
    if not cmdline:
        target.unlink(missing_ok=True)
        return None
    pv_dir.mkdir(parents=True, exist_ok=True)
    # written once per revision before it can boot, so atomic replace is right here (GRUB reads
    # it, never writes it: no in-place requirement as for the grubenv)
    atomic_write(target, grub_layout().encode({"pv_cmdline": cmdline}, source=str(target)))
    return target
