"""A minimal container root filesystem from the host's static busybox, for `pvreal bench` and
the real-backend tests: one symlink per applet, /etc/passwd with root, and /sbin/init."""

from __future__ import annotations

import shutil
from pathlib import Path

from pvreal import tools

ROOTFS_DIRS = ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root")


def busybox_rootfs(dest: Path, init_script: str) -> Path:
    """Fill `dest` (created if needed) and return it. `init_script` becomes /sbin/init (0755).
    Existing files are kept, except /sbin/init; a missing busybox is a ToolError naming the
    package (busybox-static)."""
    busybox = tools.require("busybox")
    for d in ROOTFS_DIRS:
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    for applet in tools.run([busybox, "--list"]).split():
        link = dest / "bin" / applet
        if applet != "busybox" and not link.is_symlink() and not link.exists():
            link.symlink_to("busybox")  # never overwrite busybox itself
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    init = dest / "sbin" / "init"
    init.write_text(init_script)
    init.chmod(0o755)
    return dest
