"""One daemon per storage folder (issue 16, point 3): the second `device run` on a folder exits 1
naming the first one's PID, and the first goes on untouched; the lock dies with its holder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from devicekit import REPO, started_device

from pvreal.device.storagelock import LOCK_NAME, StorageBusy, StorageLock


def test_lock_names_its_holder_and_is_released(tmp_path):
    first = StorageLock(tmp_path / "storage").acquire()
    with pytest.raises(StorageBusy, match=rf"PID {os.getpid()}\b"):
        StorageLock(tmp_path / "storage").acquire()
    assert (tmp_path / "storage" / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    first.release()
    StorageLock(tmp_path / "storage").acquire().release()


@pytest.mark.root
@pytest.mark.xdist_group("real")
def test_second_daemon_on_one_storage_exits_and_leaves_the_first_alone(tmp_path):
    _, first = started_device(tmp_path, network=True)
    try:
        assert first.proc is not None
        before = first.status()
        pids = {c["name"]: c["pid"] for c in first.client.containers()}
        socket_inode = first.socket.stat().st_ino
        # the same storage, the same socket and run dir: none of it may be touched
        second = subprocess.run(
            [sys.executable, "-m", "pvreal.device", "run", "--storage", str(first.storage),
             "--socket", str(first.socket), "--run-dir", str(first.run_dir)],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )
        assert second.returncode == 1, second.stderr
        assert f"PID {first.proc.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert first.proc.poll() is None
        assert first.socket.stat().st_ino == socket_inode
        after = first.wait_settled(30)
        assert (after["boots"], after["running"]) == (before["boots"], before["running"])
        assert {c["name"]: c["pid"] for c in first.client.containers()} == pids
        # killed with -9, the holder no longer holds: a restart takes the folder over
        first.kill9()
        first.start()
        assert first.status()["running"] == "0"
    finally:
        first.stop()
    assert first.leftovers() == [], first.tail()
