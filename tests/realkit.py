"""Helpers shared by the real-backend tests (test_real_*.py): a busybox root filesystem and the
skip rules for tools and root."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pvreal import rootfs

BUSYBOX = shutil.which("busybox")

# An init that leaves on SIGTERM (a pid namespace's init ignores signals it has no handler for),
# records the hostname it sees, and idles in short sleeps so the trap runs promptly.
POLITE_INIT = """#!/bin/sh
trap 'echo "init: SIGTERM, leaving"; exit 0' TERM
hostname > /tmp/hostname-at-start
echo "init: started as $(hostname)"
while :; do sleep 1 & wait $!; done
"""
# An init without a handler: SIGTERM is ignored, only SIGKILL stops it.
STUBBORN_INIT = """#!/bin/sh
echo "init: started, ignoring SIGTERM"
while :; do sleep 1 & wait $!; done
"""


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"needs {', '.join(missing)} (apt-get install runc squashfs-tools busybox-static)"
        )


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts, network namespaces and runc")


def busybox_rootfs(dest: Path, init: str = POLITE_INIT) -> Path:
    """pvreal.rootfs.busybox_rootfs (skipping without busybox), plus /sbin/stubborn-init."""
    need_tools("busybox")
    rootfs.busybox_rootfs(dest, init)
    stubborn = dest / "sbin" / "stubborn-init"
    stubborn.write_text(STUBBORN_INIT)
    stubborn.chmod(0o755)
    return dest


@pytest.fixture(scope="session", name="busybox_tree")
def busybox_tree_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One busybox root filesystem per test session; tests must treat it as read-only."""
    need_tools("busybox")
    return busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")
