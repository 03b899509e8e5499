"""The machine around a device's engine: what is set up before the first boot and torn down after
the last (pvreal.device.daemon calls these; they decide nothing Pantavisor decides)."""

from __future__ import annotations

import contextlib
import shutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pvreal.device.daemon import Device


def prepare(device: Device) -> None:
    """Before the first boot: the storage layout, a clean run dir, no leftovers of an earlier
    daemon (containers, network namespaces), the device's network and the container watcher."""
    device.storage.init_layout()
    (device.storage.trails_dir / "locals").mkdir(exist_ok=True)
    device.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    device.runner.cleanup_leftovers()
    shutil.rmtree(device.run_dir / "containers", ignore_errors=True)
    if device.network is not None:
        for stale in device.network.leftovers():
            with contextlib.suppress(Exception):
                from pyroute2 import netns

                netns.remove(stale)
        device.network.setup()
    device.runner.start_watching()


def shut_down(device: Device) -> None:
    """After the last boot: containers stopped, network namespaces and sockets removed."""
    device.runner.stop_all(device.config.stop_grace)
    device.runner.stop_watching()
    if device.network is not None:
        with contextlib.suppress(Exception):
            device.network.teardown()
    device.runner.cleanup_leftovers()
    shutil.rmtree(device.ctrl_dir, ignore_errors=True)
