"""Serve one device (`pvreal device run`): the daemon plus its pv-ctrl socket, until SIGTERM or
SIGINT, or until the daemon stops by itself."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from pvreal.ctrl.server import serve_device
from pvreal.device.daemon import Device, DeviceOptions
from pvreal.mounts import enter_private_mount_namespace
from shared.errors import PvError


def serve(options: DeviceOptions, socket_path: Path | None = None) -> None:
    """Run the device; the socket defaults to `<run dir>/pv-ctrl`. A daemon that stopped on an
    error raises it as a PvError once everything is closed."""
    # Before any thread exists: our mounts stay ours and vanish with us, even on kill -9.
    enter_private_mount_namespace()
    device = Device(options)
    socket_path = socket_path or device.run_dir / "pv-ctrl"
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = serve_device(device, socket_path)
    for line in device.inspection_lines():
        logging.info("%s", line)
    logging.info("pv-ctrl on %s", socket_path)
    device.start()
    try:
        while not stop.wait(0.2):
            if not device.running:
                break
    finally:
        device.stop()
        server.close()
    if device.error is not None:
        raise PvError(f"device stopped: {device.error}")
