"""Inspecting a running device (root, runc): the daemon prints its id, runc root, network
namespace names and stop grace at start; the commands docs/device.md gives to look inside work
as written; `ctl status` shows a reboot while the containers stop (not IDLE)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from devicekit import Daemon, Revisions, need_device
from realkit import STUBBORN_INIT

from pvreal.cli import main as pvreal_main

DOC = Path(__file__).resolve().parent.parent / "docs" / "device.md"


def _stubborn_device(base: Path) -> Daemon:
    """One container, `app1`, whose init ignores SIGTERM; a 2 s stop grace; networked."""
    need_device()
    revs = Revisions(base / "revs", group_timeout=3)
    d = Daemon(base / "dev", network=True, extra_args=("--stop-grace", "2"))
    d.init(revs.state("f0", {"app1": {"tag": "s1", "init": STUBBORN_INIT}}), revs.objects)
    d.start()
    return d


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_start_up_lines_name_what_to_inspect_and_the_doc_commands_work(tmp_path):
    d = _stubborn_device(tmp_path)
    try:
        assert d.proc is not None
        pid, prefix = d.proc.pid, d.prefix
        runc_root = d.run_dir / "containers" / "runc"
        log = d.tail(20000)
        assert f"device {prefix}: storage {d.storage}, run dir {d.run_dir}, daemon pid {pid}" in log
        assert f"runc root {runc_root} (runc --root {runc_root} list)" in log
        assert "stop grace 2 s" in log
        assert f"network namespaces: device {prefix}-dev" in log
        assert f"containers {prefix}-<name>; enter one with nsenter -t {pid} -m ip netns exec" in log
        assert re.search(rf"app1: started, runc id {prefix}-app1, pid \d+, netns {prefix}-app1", log)

        # docs/device.md "Inspecting a running device": these exact forms
        doc = DOC.read_text()
        assert "runc --root <runc root> list" in doc
        assert "nsenter -t <daemon pid> -m ip netns exec <netns> ip -br addr" in doc
        listed = _run(["runc", "--root", str(runc_root), "list"])
        assert re.search(rf"^{prefix}-app1\s+\d+\s+running", listed.stdout, re.M), listed
        address = d.client.containers()[0]["address"]
        inside = _run(["nsenter", "-t", str(pid), "-m", "ip", "netns", "exec", f"{prefix}-app1",
                       "ip", "-br", "addr"])
        assert inside.returncode == 0 and address in inside.stdout, inside
        # the netns name is visible on the host, its binding is not: the doc says why
        refused = _run(["ip", "netns", "exec", f"{prefix}-app1", "true"])
        assert refused.returncode != 0
        assert "Invalid argument" in refused.stderr
    finally:
        d.stop()


def test_ctl_status_shows_the_containers_stopping_for_a_reboot(tmp_path, capsys):
    d = _stubborn_device(tmp_path)
    try:
        assert d.status()["activity"] is None
        assert pvreal_main(["ctl", "--socket", str(d.socket), "reboot"]) == 0
        capsys.readouterr()
        seen = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "stopping containers" not in seen:
            assert pvreal_main(["ctl", "--socket", str(d.socket), "status"]) == 0
            seen = capsys.readouterr().out
        # the stubborn init holds the stop for the whole 2 s grace: status says so meanwhile
        assert "(REBOOTING: stopping containers to reboot (" in seen, seen
        status = d.wait_settled()
        assert status["boots"] == 2 and status["activity"] is None
        assert status["phase"] == "IDLE"
        assert re.search(r"app1: stopped: killed after [\d.]+ s \(grace 2\.0 s\)", d.tail(20000))
    finally:
        d.stop()
